"""The export graph: a framework-neutral list of layers that converters consume.

A PyTorch model is traced with ``torch.fx`` (binary layers kept whole) and every node
is mapped to a ``Node`` holding numpy parameters in NCHW / OIHW layout. Binary layers
carry what their binarizer exports (``WeightExport``, ``ActivationExport``), so
converters never see binarizer names. Anything outside the supported layer set is
refused with an error naming the layer.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from bnn_export.binarizers.exports import ActivationExport, WeightExport
from bnn_export.errors import BnnExportError
from bnn_export.geometry import conv_output_size
from bnn_export.models.layers import BinaryConv2d, BinaryLinear, _BinaryBase

OPS = (
    "input", "conv", "bconv", "linear", "blinear", "bn", "maxpool", "avgpool", "gap",
    "flatten", "add", "hardtanh", "relu", "identity",
)  # fmt: skip


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Graph:
    nodes: list[Node]
    output: str
    input_shape: tuple[int, int, int]  # C, H, W
    meta: dict[str, Any] = field(default_factory=dict)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    def binary_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.op in ("bconv", "blinear")]

    def bit_ratios(self) -> dict[str, float]:
        """Fraction of +1 weights of each binary layer, keyed by module name."""
        return {
            n.attrs["module"]: float((n.attrs["weights"].bits == 1).mean())
            for n in self.binary_nodes()
        }

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-node output shapes for batch 1 (run through numpy shape rules)."""
        return infer_shapes(self)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _BinaryBase) or super().is_leaf_module(m, qualname)


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().numpy().astype(np.float32)


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, str):
        raise BnnExportError(f"string padding {v!r} is not supported; use explicit integers")
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _module_node(name: str, m: nn.Module, inputs: list[str]) -> Node:
    if isinstance(m, BinaryConv2d):
        if not m.is_binary:  # float baseline: hardtanh then a float conv
            return Node(
                name, "conv", inputs, _conv_attrs(m, m.weight, None) | {"pre_hardtanh": True}
            )
        return Node(name, "bconv", inputs, _conv_attrs(m, None, None) | _binary_attrs(m))
    if isinstance(m, BinaryLinear):
        if not m.is_binary:
            return Node(
                name,
                "linear",
                inputs,
                {"weight": _np(m.weight), "bias": None, "pre_hardtanh": True},
            )
        return Node(name, "blinear", inputs, _binary_attrs(m))
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros":
            raise BnnExportError(
                f"layer {name!r}: padding_mode {m.padding_mode!r} is not supported"
            )
        return Node(name, "conv", inputs, _conv_attrs(m, m.weight, m.bias))
    if isinstance(m, nn.Linear):
        return Node(name, "linear", inputs, {"weight": _np(m.weight), "bias": _np(m.bias)})
    if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
        if m.running_mean is None or m.running_var is None:
            raise BnnExportError(f"layer {name!r}: batch norm without running statistics")
        gamma = _np(m.weight) if m.affine else np.ones(m.num_features, np.float32)
        beta = _np(m.bias) if m.affine else np.zeros(m.num_features, np.float32)
        mean, var = _np(m.running_mean), _np(m.running_var)
        assert gamma is not None and beta is not None and mean is not None and var is not None
        return Node(name, "bn", inputs, {"gamma": gamma, "beta": beta, "mean": mean, "var": var,
                                         "eps": float(m.eps)})  # fmt: skip
    if isinstance(m, nn.MaxPool2d | nn.AvgPool2d):
        k, s = _pair(m.kernel_size), _pair(m.stride if m.stride is not None else m.kernel_size)
        if (
            _pair(m.padding) != (0, 0)
            or getattr(m, "ceil_mode", False)
            or (isinstance(m, nn.MaxPool2d) and _pair(m.dilation) != (1, 1))
        ):
            raise BnnExportError(
                f"layer {name!r}: pooling with padding/ceil_mode/dilation is not supported"
            )
        return Node(name, "maxpool" if isinstance(m, nn.MaxPool2d) else "avgpool", inputs,
                    {"kernel": k, "stride": s})  # fmt: skip
    if isinstance(m, nn.AdaptiveAvgPool2d):
        if _pair(m.output_size) != (1, 1):
            raise BnnExportError(f"layer {name!r}: only AdaptiveAvgPool2d(1) is supported")
        return Node(name, "gap", inputs)
    if isinstance(m, nn.Flatten):
        return Node(name, "flatten", inputs)
    if isinstance(m, nn.Identity):
        return Node(name, "identity", inputs)
    if isinstance(m, nn.Hardtanh) and (m.min_val, m.max_val) == (-1.0, 1.0):
        return Node(name, "hardtanh", inputs)
    if isinstance(m, nn.ReLU):
        return Node(name, "relu", inputs)
    raise BnnExportError(
        f"layer {name!r} of type {type(m).__name__} cannot be exported",
        hint="supported: Conv2d, Linear, BinaryConv2d, BinaryLinear, BatchNorm, Max/AvgPool2d, "
        "AdaptiveAvgPool2d(1), Flatten, Identity, ReLU, Hardtanh(-1, 1), and +",
    )


def _conv_attrs(m: BinaryConv2d | nn.Conv2d, weight: Any, bias: Any) -> dict[str, Any]:
    return {
        "weight": _np(weight),
        "bias": _np(bias),
        "kernel": _pair(m.kernel_size),
        "stride": _pair(m.stride),
        "padding": _pair(m.padding),
        "dilation": _pair(m.dilation),
        "groups": int(m.groups),
    }


def _binary_attrs(m: _BinaryBase) -> dict[str, Any]:
    weights: WeightExport = m.export_weights()
    if weights.ternary:
        raise BnnExportError(
            f"layer {m!r} has pruned (zero) weights; binary conv ops cannot express 0",
            hint="export a model trained without --prune-rate",
        )
    activation: ActivationExport = m.export_activation()
    return {"weights": weights, "activation": activation,
            "pad_value": float(getattr(m, "pad_value", 1.0))}  # fmt: skip


def graph_from_torch(model: nn.Module, input_shape: tuple[int, int, int]) -> Graph:
    """Trace a PyTorch model (eval mode) into an export graph."""
    model.eval()
    try:
        traced = fx.GraphModule(model, _Tracer().trace(model))
    except (torch.fx.proxy.TraceError, TypeError, RuntimeError) as exc:
        raise BnnExportError(f"cannot trace the model for export: {exc}") from None
    modules = dict(traced.named_modules())
    nodes: list[Node] = []
    output = ""
    for n in traced.graph.nodes:
        args = [a.name for a in n.args if isinstance(a, fx.Node)]
        if n.op == "placeholder":
            nodes.append(Node(n.name, "input", []))
        elif n.op == "call_module":
            nodes.append(_module_node(n.target, modules[n.target], args))
            nodes[-1].name = n.name
            nodes[-1].attrs["module"] = n.target
        elif n.op == "call_function" and n.target in (operator.add, torch.add) and len(args) == 2:
            nodes.append(Node(n.name, "add", args))
        elif n.op == "call_function" and n.target is torch.flatten:
            nodes.append(Node(n.name, "flatten", args))
        elif n.op == "output":
            output = args[0]
        else:
            raise BnnExportError(
                f"operation {n.op} {getattr(n.target, '__name__', n.target)!r} ({n.name}) cannot be "
                "exported; supported functions are + and torch.flatten"
            )
    c, h, w = input_shape
    graph = Graph(nodes, output, (int(c), int(h), int(w)))
    infer_shapes(graph)  # validates the wiring
    return graph


def infer_shapes(graph: Graph) -> dict[str, tuple[int, ...]]:
    """Output shape of every node for a batch of one (NCHW)."""
    shapes: dict[str, tuple[int, ...]] = {}

    for n in graph.nodes:
        x = shapes[n.inputs[0]] if n.inputs else (1, *graph.input_shape)
        a = n.attrs
        if n.op == "input":
            shapes[n.name] = (1, *graph.input_shape)
        elif n.op in ("conv", "bconv"):
            o = (a["weight"] if n.op == "conv" else a["weights"].bits).shape[0]
            hw = [conv_output_size(x[2 + i], a["kernel"][i], a["stride"][i], a["padding"][i],
                                   a["padding"][i], a["dilation"][i]) for i in range(2)]  # fmt: skip
            shapes[n.name] = (1, o, *hw)
        elif n.op in ("linear", "blinear"):
            w = a["weight"] if n.op == "linear" else a["weights"].bits
            if x[-1] != w.shape[1] or len(x) != 2:
                raise BnnExportError(
                    f"layer {a.get('module', n.name)!r}: input {x} does not fit {w.shape}"
                )
            shapes[n.name] = (1, w.shape[0])
        elif n.op in ("maxpool", "avgpool"):
            hw = [
                conv_output_size(x[2 + i], a["kernel"][i], a["stride"][i], 0, 0) for i in range(2)
            ]
            shapes[n.name] = (1, x[1], *hw)
        elif n.op == "gap":
            shapes[n.name] = (1, x[1], 1, 1)
        elif n.op == "flatten":
            shapes[n.name] = (1, int(np.prod(x[1:])))
        elif n.op == "add":
            if shapes[n.inputs[0]] != shapes[n.inputs[1]]:
                raise BnnExportError(
                    f"add {n.name}: shapes {shapes[n.inputs[0]]} and {shapes[n.inputs[1]]} differ"
                )
            shapes[n.name] = x
        else:
            shapes[n.name] = x
    return shapes


def fold_bn(bn: Node) -> tuple[np.ndarray, np.ndarray]:
    """Batch norm as y = x * scale + shift (per channel)."""
    a = bn.attrs
    scale = a["gamma"] / np.sqrt(a["var"] + np.float32(a["eps"]))
    return scale.astype(np.float32), (a["beta"] - a["mean"] * scale).astype(np.float32)
