"""The export graph: a framework-neutral list of layers that converters consume.

A PyTorch model is traced with ``torch.fx`` (binary layers kept whole) and every node
is mapped, by the op table (``convert/ops``), to a ``Node`` holding the op's typed
attributes with numpy parameters in NCHW / OIHW layout. Binary layers carry what their
binarizer exports (``WeightExport``, ``ActivationExport``), so converters never see
binarizer names. Anything the table does not cover is refused with an error naming the
layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from bnn_export.convert.ops import OPS, NoAttrs, Op, get_op
from bnn_export.convert.ops.float_layers import BatchNormAttrs
from bnn_export.errors import BnnExportError
from bnn_export.models.layers import _BinaryBase

__all__ = ["OPS", "Graph", "Node", "fold_bn", "graph_from_torch", "infer_shapes"]


@dataclass
class Node:
    """One op applied to the outputs of ``inputs`` (node names); ``attrs`` is an instance
    of the op's ``attrs_type`` (a frozen dataclass, checked here; typed access:
    ``node.definition.attrs(node)``), ``module`` the PyTorch module it was traced from."""

    name: str
    op: str
    inputs: list[str]
    attrs: Any = field(default_factory=NoAttrs)
    module: str | None = None

    def __post_init__(self) -> None:
        expected = get_op(self.op).attrs_type
        if not isinstance(self.attrs, expected):
            raise BnnExportError(
                f"node {self.name!r}: op {self.op!r} takes {expected.__name__} attributes, "
                f"got {type(self.attrs).__name__}"
            )

    @property
    def definition(self) -> Op[Any]:
        return OPS[self.op]

    @property
    def label(self) -> str:
        """The name to report: the PyTorch module's, else the node's."""
        return self.module or self.name


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
        return [n for n in self.nodes if n.definition.binary]

    def bit_ratios(self) -> dict[str, float]:
        """Fraction of +1 weights of each binary layer, keyed by module name."""
        return {n.label: float((n.attrs.weights.bits == 1).mean()) for n in self.binary_nodes()}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-node output shapes for batch 1 (run through numpy shape rules)."""
        return infer_shapes(self)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _BinaryBase) or super().is_leaf_module(m, qualname)


def _module_op(name: str, m: nn.Module) -> tuple[Op[Any], Any]:
    """The one op of the table that claims module ``m``, with its attributes."""
    for op in OPS.values():
        if isinstance(m, op.modules) and (attrs := op.from_module(name, m)) is not None:
            return op, attrs
    raise BnnExportError(
        f"layer {name!r} of type {type(m).__name__} cannot be exported",
        hint="supported: " + ", ".join(op.pattern for op in OPS.values() if op.modules),
    )


def _function_op(target: Any, inputs: int) -> tuple[Op[Any], Any] | None:
    """The one op of the table that claims a call of function ``target``, if any."""
    for op in OPS.values():
        if target in op.functions and (attrs := op.from_function(target, inputs)) is not None:
            return op, attrs
    return None


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
            op, attrs = _module_op(n.target, modules[n.target])
            nodes.append(Node(n.name, op.name, args, attrs, module=n.target))
        elif n.op == "call_function" and (found := _function_op(n.target, len(args))):
            nodes.append(Node(n.name, found[0].name, args, found[1]))
        elif n.op == "output":
            output = args[0]
        else:
            supported = " and ".join(op.pattern for op in OPS.values() if op.functions)
            raise BnnExportError(
                f"operation {n.op} {getattr(n.target, '__name__', n.target)!r} ({n.name}) cannot "
                f"be exported; supported functions are {supported}"
            )
    c, h, w = input_shape
    graph = Graph(nodes, output, (int(c), int(h), int(w)))
    infer_shapes(graph)  # validates the wiring
    return graph


def infer_shapes(graph: Graph) -> dict[str, tuple[int, ...]]:
    """Output shape of every node for a batch of one (NCHW), by each op's shape rule."""
    shapes: dict[str, tuple[int, ...]] = {}
    for n in graph.nodes:
        inputs = [shapes[i] for i in n.inputs] or [(1, *graph.input_shape)]
        shapes[n.name] = n.definition.out_shape(n, inputs)
    return shapes


def fold_bn(bn: Node) -> tuple[np.ndarray, np.ndarray]:
    """Batch norm as y = x * scale + shift (per channel)."""
    attrs: BatchNormAttrs = bn.attrs
    return attrs.folded()
