"""Export graph -> ONNX, for three targets.

- ``onnxruntime``: binary convs and binary linears become ``com.bnn_export::BinaryConv2d``
  (bit-packed weights, folded per-channel multiplier/bias; docs/onnx_ops.md), run by our
  xor/popcount kernels inside onnxruntime.
- ``openvino``: binarization as ``org.openvinotoolkit::FakeQuantize(levels=2)`` + a
  standard Conv with +-1 weights, which OpenVINO's CPU plugin runs as BinaryConvolution.
- ``reference``: standard ops only (sign as Where + float Conv): any runtime, no speed-up.

Everything else (float first/last layers, batch norm, pooling, shortcuts) is standard
ONNX (opset 17). Each op of the graph emits itself (``convert/ops``: ``Op.to_onnx``)
through an ``OnnxEmitter``; this module walks the graph and assembles the model.
"""

from __future__ import annotations

import json
from typing import Any, cast

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bnn_export import __version__
from bnn_export.convert import onnx_ops
from bnn_export.convert.graph import Graph, Node, fold_affine_into_thresholds
from bnn_export.convert.ops.binary import (
    OPENVINO_DOMAIN,
    OPENVINO_FQ_HIGH,
    OPENVINO_FQ_LOW,
    BinaryOp,
)
from bnn_export.convert.ops.runtime_rules import OPENVINO_CHANNEL_MULTIPLE
from bnn_export.errors import BnnExportError

__all__ = [
    "OPENVINO_CHANNEL_MULTIPLE",
    "OPENVINO_DOMAIN",
    "OPENVINO_FQ_HIGH",
    "OPENVINO_FQ_LOW",
    "OPSET",
    "TARGETS",
    "OnnxEmitter",
    "openvino_float_layers",
    "to_onnx",
]

TARGETS = ("onnxruntime", "openvino", "reference")
OPSET = 17


def openvino_float_layers(graph: Graph) -> list[str]:
    """Binary layers the openvino target keeps as exact float convs
    (``ops.runtime_rules``)."""
    shapes = graph.shapes()
    return [
        n.label
        for n in graph.binary_nodes()
        if not cast(BinaryOp, n.definition).openvino_binary(n, shapes[n.inputs[0]])
    ]


class OnnxEmitter:
    """The ONNX model under construction, handed to each op's ``to_onnx``: nodes and
    initializers so far, the tensor name of every graph node emitted, the graph's shapes."""

    def __init__(
        self,
        graph: Graph,
        target: str,
        accumulators: bool = False,
        fuse_rprelu: bool = True,
    ) -> None:
        self.graph = graph
        self.target = target
        self.accumulators = accumulators
        #: onnxruntime: an RPReLU right after a BinaryConv2d becomes its rprelu_* inputs
        self.fuse_rprelu_enabled = fuse_rprelu
        self.shapes = graph.shapes()
        self.names: dict[str, str] = {}  # graph node -> tensor name
        self.folded: set[str] = set()  # bn nodes folded into the preceding binary op
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.used_domains: set[str] = set()
        self.extra_outputs: list[tuple[str, list[Any]]] = []
        #: (input tensor, activation) -> binary layers binarizing it so far (openvino)
        self.binarized_uses: dict[tuple[str, str, bytes | None], int] = {}
        #: graph node (a binary conv, or the batch norm folded into it) -> its
        #: BinaryConv2d node, while a residual Add may still be fused into it (onnxruntime)
        self.fusable: dict[str, onnx.NodeProto] = {}
        #: residual Add fused into a BinaryConv2d -> that node, while an RPReLU may still be
        #: fused into it (onnxruntime)
        self.rprelu_fusable: dict[str, onnx.NodeProto] = {}

    def input(self, node: Node, i: int = 0) -> str:
        """Tensor name of the node's ``i``-th input."""
        return self.names[node.inputs[i]] if node.inputs else "input"

    def in_shape(self, node: Node, i: int = 0) -> tuple[int, ...]:
        return self.shapes[node.inputs[i]]

    def fuse_residual(self, add: Node) -> str | None:
        """Fuse ``add`` = BinaryConv2d output + another tensor into the BinaryConv2d (its
        ``residual`` input), when the op's output feeds nothing else and the shapes are
        equal; returns the fused output's name (None: emit a plain Add). The op's node
        moves to the end of the node list, after the residual's producer."""
        if self.target != "onnxruntime":
            return None
        for i in (0, 1):
            src, other = add.inputs[i], add.inputs[1 - i]
            proto = self.fusable.get(src)
            if (
                proto is None
                or src == self.graph.output
                or len(self.graph.consumers(src)) != 1
                or self.shapes[src] != self.shapes[other]
            ):
                continue
            del self.fusable[src]
            self._pad_optional_inputs(proto, onnx_ops.INPUTS.index("residual"))
            proto.input.append(self.names[other])
            self.nodes.remove(proto)
            self.nodes.append(proto)
            self.rprelu_fusable[add.name] = proto
            return str(proto.output[0])
        return None

    def fuse_rprelu(
        self, node: Node, shift: np.ndarray, slope: np.ndarray, bias: np.ndarray
    ) -> str | None:
        """Fuse the RPReLU ``node`` (``prelu(x - shift, slope) + bias`` per channel) into the
        BinaryConv2d producing its input (possibly with a fused residual): the op's
        ``rprelu_*`` inputs, when the op's output feeds nothing else. A channel Concat of
        such outputs (ReActNet-A's widening blocks) counts too: each op gets its slice of
        the vectors. Returns the fused output's name (None: emit Sub, PRelu, Add).
        onnxruntime only."""
        if self.target != "onnxruntime" or not self.fuse_rprelu_enabled or not node.inputs:
            return None
        src = node.inputs[0]
        shape = self.shapes[src]
        if src == self.graph.output or len(self.graph.consumers(src)) != 1 or len(shape) != 4:
            return None
        channels = shape[1]
        vectors = [np.asarray(v, np.float32).reshape(-1) for v in (shift, slope, bias)]
        if vectors[1].size == 1:  # one shared slope
            vectors[1] = np.full(channels, vectors[1][0], np.float32)
        if any(v.size != channels for v in vectors):
            return None
        producer = next((n for n in self.graph.nodes if n.name == src), None)
        parts = list(producer.inputs) if producer is not None and producer.op == "concat" else [src]
        protos: list[onnx.NodeProto] = []
        for part in parts:
            proto = self.fusable.get(part)
            if proto is None:
                proto = self.rprelu_fusable.get(part)
            if (
                proto is None
                or part == self.graph.output
                or len(self.graph.consumers(part)) != 1
                or len(self.shapes[part]) != 4
                or any(p is proto for p in protos)
            ):
                return None
            protos.append(proto)
        if sum(self.shapes[part][1] for part in parts) != channels:
            return None
        start = 0
        for i, (part, proto) in enumerate(zip(parts, protos, strict=True)):
            self.fusable.pop(part, None)
            self.rprelu_fusable.pop(part, None)
            self._pad_optional_inputs(proto, onnx_ops.INPUTS.index("rprelu_shift"))
            stop = start + self.shapes[part][1]
            suffix = f"_{i}" if len(parts) > 1 else ""
            for what, v in zip(("shift", "slope", "bias"), vectors, strict=True):
                proto.input.append(self.const(f"{node.name}_rprelu_{what}{suffix}", v[start:stop]))
            start = stop
        return self.names[src]

    def _pad_optional_inputs(self, proto: onnx.NodeProto, position: int) -> None:
        """Give a BinaryConv2d node an empty [0] tensor for every optional input it lacks
        before ``position`` (``onnx_ops.INPUTS`` order), so the next one lands there."""
        while len(proto.input) < position:
            what = onnx_ops.INPUTS[len(proto.input)]
            proto.input.append(self.const(f"{proto.name}_no_{what}", np.zeros(0, np.float32)))

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
    fuse_rprelu: bool = True,
) -> onnx.ModelProto:
    """Build the ONNX model of an export graph (batch dimension dynamic: ``N``).

    ``accumulators`` (for tests): per binary layer, two more graph outputs after the model's
    own: ``<node>_binput``, the float tensor the layer binarizes, and ``<node>_acc``, its
    integer accumulator sum(a * w) (as float32, [N, O, H, W]) computed by the target's
    binary kernel (onnxruntime: one more BinaryConv2d with multiplier 1 and bias 0).

    ``fuse_rprelu`` (onnxruntime; for tests and comparisons): an RPReLU right after a
    BinaryConv2d (and its fused residual) becomes the op's ``rprelu_*`` inputs; False
    keeps it as Sub, PRelu, Add.
    """
    if target not in TARGETS:
        raise BnnExportError(
            f"Expected `target` to be one of {', '.join(TARGETS)}, but got {target!r}"
        )
    if target == "openvino":
        graph = fold_affine_into_thresholds(graph)
    e = OnnxEmitter(graph, target, accumulators, fuse_rprelu)
    for n in graph.nodes:
        if n.name in e.folded:
            e.names[n.name] = e.input(n)
        else:
            e.names[n.name] = n.definition.to_onnx(n, e)
    out_shape = e.shapes[graph.output]
    model_graph = helper.make_graph(
        e.nodes,
        "bnn_export",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *graph.input_shape])],
        [
            helper.make_tensor_value_info(
                e.names[graph.output], TensorProto.FLOAT, ["N", *out_shape[1:]]
            )
        ]
        + [
            helper.make_tensor_value_info(t, TensorProto.FLOAT, shape)
            for t, shape in e.extra_outputs
        ],
        e.inits,
    )
    opsets = [helper.make_opsetid("", OPSET)] + [
        helper.make_opsetid(d, 1) for d in sorted(e.used_domains)
    ]
    model = helper.make_model(
        model_graph, opset_imports=opsets, producer_name="bnn-export", producer_version=__version__
    )
    model.ir_version = 8
    meta = {"bnn_export_version": __version__, "bnn_export_target": target, **(metadata or {})}
    for k, v in sorted(meta.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    onnx.checker.check_model(model)
    return model
