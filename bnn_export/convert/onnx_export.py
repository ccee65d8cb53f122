"""Export graph -> ONNX, for three targets.

- ``onnxruntime``: binary convs and binary linears become ``com.bnn_export::BinaryConv2d``
  (bit-packed weights, folded per-channel multiplier/bias; docs/onnx_ops.md), run by our
  xor/popcount kernels inside onnxruntime.
- ``openvino``: binarization as ``org.openvinotoolkit::FakeQuantize(levels=2)`` + a
  standard Conv with +-1 weights, which OpenVINO's CPU plugin runs as BinaryConvolution.
- ``reference``: standard ops only (sign as Where + float Conv): any runtime, no speed-up.

Everything else (float first/last layers, batch norm, pooling, shortcuts) is standard
ONNX (opset 17).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bnn_export import __version__
from bnn_export.convert.graph import Graph, Node, fold_bn
from bnn_export.convert.onnx_ops import DOMAIN, make_binary_conv2d_node, pack_conv_weights
from bnn_export.errors import BnnExportError
from bnn_export.geometry import conv_output_size

TARGETS = ("onnxruntime", "openvino", "reference")
OPSET = 17
OPENVINO_DOMAIN = "org.openvinotoolkit"
#: FakeQuantize input range for OpenVINO: its binarization threshold is the midpoint
#: -2^-22, so x == 0 maps to +1 like everywhere else (a symmetric range maps 0 to -1);
#: inputs in (-2^-22, 0) also map to +1 there, a documented deviation.
OPENVINO_FQ_LOW, OPENVINO_FQ_HIGH = -(2.0**-20), 2.0**-21
#: OpenVINO's CPU BinaryConvolution computes wrong sums when the input channels are not a
#: multiple of 8 (found by tests/test_fuzz_export.py, openvino 2025); such layers, and
#: grouped ones (never fused into BinaryConvolution), are exported as an exact float Conv
#: over sign(x) instead (integer sums, no rounding) and reported as float fallbacks.
OPENVINO_CHANNEL_MULTIPLE = 8


def openvino_float_layers(graph: Graph) -> list[str]:
    """Binary layers the openvino target keeps as exact float convs (see above)."""
    shapes = graph.shapes()
    return [n.attrs.get("module", n.name) for n in graph.binary_nodes()
            if not _openvino_binary_ok(n, shapes[n.inputs[0]])]  # fmt: skip


def _openvino_binary_ok(n: Node, in_shape: tuple[int, ...]) -> bool:
    """OpenVINO's CPU plugin fuses FakeQuantize + Conv into BinaryConvolution only for
    ungrouped convs (grouped ones run as a float GroupConvolution: found by the fuzz
    suite's runtime-op check), compiles it only with an output no smaller than the zero
    padding, and computes it right only for channels a multiple of 8."""
    if n.op == "bconv":
        a = n.attrs
        if int(a["groups"]) > 1:
            return False
        if float(a["pad_value"]) == 0.0:
            # zero padding stays in the Conv; OpenVINO's CPU plugin refuses to compile a
            # BinaryConvolution whose output is smaller than its padding ("has unsupported
            # parameters", e.g. 5x5 dilation 2 'same' on a 5x5 map; found by the fuzz suite)
            for i in range(2):
                k, s, p, d = a["kernel"][i], a["stride"][i], a["padding"][i], a["dilation"][i]
                if conv_output_size(in_shape[2 + i], k, s, p, p, d) < p:
                    return False
    return in_shape[1] % OPENVINO_CHANNEL_MULTIPLE == 0


class _Builder:
    def __init__(self, target: str, accumulators: bool = False) -> None:
        self.target = target
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.used_domains: set[str] = set()
        self.accumulators = accumulators
        self.extra_outputs: list[tuple[str, list[Any]]] = []

    def const(self, name: str, value: np.ndarray | np.generic) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(
        self, op: str, inputs: list[str], output: str, *, domain: str = "", **attrs: Any
    ) -> str:
        self.nodes.append(
            helper.make_node(op, inputs, [output], name=output, domain=domain, **attrs)
        )
        if domain:
            self.used_domains.add(domain)
        return output


def to_onnx(
    graph: Graph,
    *,
    target: str = "onnxruntime",
    metadata: dict[str, Any] | None = None,
    accumulators: bool = False,
) -> onnx.ModelProto:
    """Build the ONNX model of an export graph (batch dimension dynamic: ``N``).

    ``accumulators`` (for tests): per binary layer, two more graph outputs after the model's
    own: ``<node>_binput``, the float tensor the layer binarizes, and ``<node>_acc``, its
    integer accumulator sum(a * w) (as float32, [N, O, H, W]) computed by the target's
    binary kernel (onnxruntime: one more BinaryConv2d with multiplier 1 and bias 0).
    """
    if target not in TARGETS:
        raise BnnExportError(
            f"Expected `target` to be one of {', '.join(TARGETS)}, but got {target!r}"
        )
    b = _Builder(target, accumulators)
    names: dict[str, str] = {}  # graph node -> tensor name
    folded: set[str] = set()  # bn nodes folded into the preceding binary op
    shapes = graph.shapes()
    for n in graph.nodes:
        if n.op == "input":
            names[n.name] = "input"
            continue
        x = names[n.inputs[0]] if n.inputs else "input"
        if n.name in folded:
            names[n.name] = x
            continue
        names[n.name] = _emit(b, graph, n, x, names, shapes, folded)
    out_shape = shapes[graph.output]
    model_graph = helper.make_graph(
        b.nodes,
        "bnn_export",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *graph.input_shape])],
        [
            helper.make_tensor_value_info(
                names[graph.output], TensorProto.FLOAT, ["N", *out_shape[1:]]
            )
        ]
        + [
            helper.make_tensor_value_info(t, TensorProto.FLOAT, shape)
            for t, shape in b.extra_outputs
        ],
        b.inits,
    )
    opsets = [helper.make_opsetid("", OPSET)] + [
        helper.make_opsetid(d, 1) for d in sorted(b.used_domains)
    ]
    model = helper.make_model(model_graph, opset_imports=opsets, producer_name="bnn-export",
                              producer_version=__version__)  # fmt: skip
    model.ir_version = 8
    meta = {"bnn_export_version": __version__, "bnn_export_target": target, **(metadata or {})}
    for k, v in sorted(meta.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    onnx.checker.check_model(model)
    return model


def _emit(
    b: _Builder, graph: Graph, n: Node, x: str, names: dict[str, str],
    shapes: dict[str, tuple[int, ...]], folded: set[str],
) -> str:  # fmt: skip
    a, name = n.attrs, n.name
    if n.op in ("conv", "linear") and a.get("pre_hardtanh"):
        x = b.node("Clip", [x, b.const(f"{name}_lo", np.float32(-1)), b.const(f"{name}_hi", np.float32(1))],
                   f"{name}_hardtanh")  # fmt: skip
    if n.op == "conv":
        ins = [x, b.const(f"{name}_w", a["weight"])]
        if a["bias"] is not None:
            ins.append(b.const(f"{name}_b", a["bias"]))
        (ph, pw), d = a["padding"], a["dilation"]
        return b.node("Conv", ins, name, kernel_shape=list(a["kernel"]), strides=list(a["stride"]),
                      pads=[ph, pw, ph, pw], dilations=list(d), group=a["groups"])  # fmt: skip
    if n.op == "linear":
        ins = [x, b.const(f"{name}_w", a["weight"])]
        if a["bias"] is not None:
            ins.append(b.const(f"{name}_b", a["bias"]))
        return b.node("Gemm", ins, name, transB=1)
    if n.op in ("bconv", "blinear"):
        return _emit_binary(b, graph, n, x, shapes, folded)
    if n.op == "bn":
        scale, shift = fold_bn(n)
        if len(shapes[n.inputs[0]]) == 2:  # [N, C]: Mul + Add broadcast over the batch
            y = b.node("Mul", [x, b.const(f"{name}_scale", scale)], f"{name}_mul")
            return b.node("Add", [y, b.const(f"{name}_shift", shift)], name)
        return b.node("BatchNormalization", [x, b.const(f"{name}_gamma", a["gamma"]),
                      b.const(f"{name}_beta", a["beta"]), b.const(f"{name}_mean", a["mean"]),
                      b.const(f"{name}_var", a["var"])], name, epsilon=a["eps"])  # fmt: skip
    if n.op in ("maxpool", "avgpool"):
        op = "MaxPool" if n.op == "maxpool" else "AveragePool"
        return b.node(op, [x], name, kernel_shape=list(a["kernel"]), strides=list(a["stride"]))
    if n.op == "gap":
        return b.node("GlobalAveragePool", [x], name)
    if n.op == "flatten":
        return b.node("Flatten", [x], name, axis=1)
    if n.op == "add":
        return b.node("Add", [names[n.inputs[0]], names[n.inputs[1]]], name)
    if n.op == "relu":
        return b.node("Relu", [x], name)
    if n.op == "hardtanh":
        return b.node(
            "Clip",
            [x, b.const(f"{name}_lo", np.float32(-1)), b.const(f"{name}_hi", np.float32(1))],
            name,
        )
    if n.op == "identity":
        return b.node("Identity", [x], name)
    raise BnnExportError(f"node {name!r}: op {n.op!r} has no ONNX export")


def _activation_input(b: _Builder, n: Node, x: str, rank: int) -> str:
    """Float preprocessing before binarization (threshold, centring, SE shift)."""
    act, name = n.attrs["activation"], n.name
    if act.kind == "sign":
        return x
    if act.kind == "threshold":
        thr = act.threshold.astype(np.float32).reshape(1, -1, *[1] * (rank - 2))
        return b.node("Sub", [x, b.const(f"{name}_threshold", thr)], f"{name}_thresholded")
    if act.kind == "center":
        mean = b.node("ReduceMean", [x], f"{name}_mean", axes=list(range(1, rank)), keepdims=1)
        return b.node("Sub", [x, mean], f"{name}_centered")
    if act.kind == "se":
        pooled = b.node("GlobalAveragePool", [x], f"{name}_se_gap") if rank == 4 else x
        flat = b.node("Flatten", [pooled], f"{name}_se_flat", axis=1)
        h = b.node("MatMul", [flat, b.const(f"{name}_se_w1", act.se_w1.T.copy())], f"{name}_se_fc1")
        h = b.node("Relu", [h], f"{name}_se_relu")
        h = b.node("MatMul", [h, b.const(f"{name}_se_w2", act.se_w2.T.copy())], f"{name}_se_fc2")
        s = b.node("Sigmoid", [h], f"{name}_se_sigmoid")
        if rank == 4:
            s = b.node("Unsqueeze", [s, b.const(f"{name}_se_axes", np.array([2, 3], np.int64))],
                       f"{name}_se_shift")  # fmt: skip
        return b.node("Add", [x, s], f"{name}_se_added")
    raise BnnExportError(
        f"layer {n.attrs.get('module', name)!r}: activation {act.kind!r} cannot be exported"
    )


def _emit_binary(
    b: _Builder, graph: Graph, n: Node, x: str, shapes: dict[str, tuple[int, ...]], folded: set[str]
) -> str:
    a, name = n.attrs, n.name
    w = a["weights"]
    linear = n.op == "blinear"
    in_shape = shapes[n.inputs[0]]
    x = _activation_input(b, n, x, len(in_shape))
    if b.accumulators:
        out_shape = [len(w.bits), 1, 1] if linear else list(shapes[n.name][1:])
        b.extra_outputs += [
            (b.node("Identity", [x], f"{name}_binput"), ["N", *in_shape[1:]]),
            (f"{name}_acc", ["N", *out_shape]),
        ]
    multiplier = w.scale.astype(np.float32)
    bias = np.zeros_like(multiplier)
    consumers = graph.consumers(n.name)
    if b.target == "onnxruntime" and len(consumers) == 1 and consumers[0].op == "bn":
        bn_scale, bn_shift = fold_bn(consumers[0])
        multiplier, bias = multiplier * bn_scale, bn_shift
        folded.add(consumers[0].name)
    bits4 = w.bits.reshape(*w.bits.shape, 1, 1) if linear else w.bits
    kernel = (1, 1) if linear else a["kernel"]
    stride = (1, 1) if linear else a["stride"]
    (ph, pw) = (0, 0) if linear else a["padding"]
    dilation = (1, 1) if linear else a["dilation"]
    groups = 1 if linear else a["groups"]
    pad_value = int(a["pad_value"])
    if linear:
        x = b.node(
            "Unsqueeze", [x, b.const(f"{name}_axes", np.array([2, 3], np.int64))], f"{name}_as4d"
        )
    if b.target == "onnxruntime":
        b.used_domains.add(DOMAIN)
        packed = b.const(f"{name}_wpacked", pack_conv_weights(bits4))
        affine = [(f"{name}_y" if linear else name, name, multiplier, bias)]
        if b.accumulators:
            affine.append(
                (f"{name}_acc", f"{name}_acc", np.ones_like(multiplier), np.zeros_like(bias))
            )
        for out, prefix, mult, add in affine:
            b.nodes.append(make_binary_conv2d_node(
                [x, packed, b.const(f"{prefix}_multiplier", mult), b.const(f"{prefix}_bias", add.astype(np.float32))],
                [out], channels_in=in_shape[1], kernel_shape=kernel, strides=stride,
                pads=[ph, pw, ph, pw], dilations=dilation, group=groups, pad_value=pad_value, name=out,
            ))  # fmt: skip
        y = f"{name}_y" if linear else name
    else:
        pads = [ph, pw, ph, pw]

        def pad_with_ones(t: str, what: str) -> str:
            nonlocal pads
            pads = [0, 0, 0, 0]
            return b.node("Pad", [t, b.const(f"{name}_pads", np.array([0, 0, ph, pw, 0, 0, ph, pw], np.int64)),
                          b.const(f"{name}_padval", np.float32(1))], f"{name}_{what}", mode="constant")  # fmt: skip

        if b.target == "openvino" and _openvino_binary_ok(n, in_shape):
            if pad_value == 1 and (ph or pw):
                # pad the float input with +1.0 (binarized to +1) before FakeQuantize: OpenVINO
                # fuses FakeQuantize -> Conv into BinaryConvolution, but not FakeQuantize ->
                # Pad -> Conv (found by the fuzz suite's runtime-op check)
                x = pad_with_ones(x, "padded_input")
            lo, hi = (
                b.const(f"{name}_fq_in_lo", np.float32(OPENVINO_FQ_LOW)),
                b.const(f"{name}_fq_in_hi", np.float32(OPENVINO_FQ_HIGH)),
            )
            olo, ohi = (
                b.const(f"{name}_fq_out_lo", np.float32(-1)),
                b.const(f"{name}_fq_out_hi", np.float32(1)),
            )
            xb = b.node(
                "FakeQuantize",
                [x, lo, hi, olo, ohi],
                f"{name}_sign",
                domain=OPENVINO_DOMAIN,
                levels=2,
            )
        else:
            cond = b.node(
                "GreaterOrEqual", [x, b.const(f"{name}_zero", np.float32(0))], f"{name}_ge0"
            )
            xb = b.node("Where", [cond, b.const(f"{name}_one", np.float32(1)), b.const(f"{name}_minus_one", np.float32(-1))],
                        f"{name}_sign")  # fmt: skip
        if pad_value == 1 and any(pads):
            xb = pad_with_ones(xb, "padded")
        conv = b.node("Conv", [xb, b.const(f"{name}_w", bits4.astype(np.float32))], f"{name}_acc",
                      kernel_shape=list(kernel), strides=list(stride), pads=pads,
                      dilations=list(dilation), group=groups)  # fmt: skip
        y = b.node("Mul", [conv, b.const(f"{name}_scale", multiplier.reshape(1, -1, 1, 1))],
                   f"{name}_y" if linear else name)  # fmt: skip
    if linear:
        return b.node("Flatten", [y], name, axis=1)
    return y
