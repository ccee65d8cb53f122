"""Export graph -> tf-keras model that Larq Compute Engine converts to ``LceBconv2d`` ops.

Layout is NHWC. A binary conv becomes a larq ``QuantConv2D`` with the ``ste_sign`` input
quantizer and a constant kernel of +-scale[o] per output channel (the LCE converter
moves the scale into the post-activation multiplier and folds a following batch norm).
Padding, following LCE 0.16's behaviour:

- stride 1 with "same" geometry: ``padding="same", pad_values=pad_value`` (LCE's fused
  padding; +1 is the cheap case);
- otherwise with pad value +1: the float input is padded with +1.0 *before* the sign
  (sign(+1) = +1), top/left p and bottom/right only what the last window reads, then a
  VALID binary conv; LCE turns that into ``LceBconv2d`` too;
- otherwise with pad value 0 (e.g. strided): a float fallback (below).

Float fallbacks: sign(x) (as ``cast(x >= 0) * 2 - 1``, which LCE does not rewrite),
padding with the pad value, then a float conv with the +-scale kernel: exact (integer
sums), a float CONV_2D in the .tflite, and reported (``lce_float_reason``), never dropped.
Besides pad value 0 with explicit padding, LCE 0.16 cannot make these 1-bit (probed in
tests/test_fuzz_export.py, docs/reliability.md):

- grouped convs: the converter emits a grouped ``LceBconv2d`` only with a multiple of 32
  input channels per group (otherwise a float conv), and LCE's default BGEMM kernel then
  refuses it at ``AllocateTensors`` ("Grouped binary convolutions are not supported with
  this kernel"; only the indirect-BGEMM kernel runs them);
- an output channel with ``|scale| <= 2^-23`` (float32 epsilon): LCE's converter then does
  not recognize the kernel as binary and silently keeps the whole conv float (IR-Net's
  scale is 2^-40 when a channel has a single weight).

RSign thresholds: LCE 0.16's ``LceQuantize`` / ``LceBconv2d`` take no threshold, so before
building, ``shift_thresholds_into_producers`` moves each per-channel threshold t into the
op that produces the binarized value (RPReLU's zeta or a batch norm's beta, minus t) and
adds t back on every other path that value takes (through identities and average pools
into a residual Add whose other operand is a batch norm: its beta, plus t; LCE folds it
into ``LceBconv2d``'s output bias). ReActNet's blocks then carry no float op for RSign;
where a value's other uses cannot take the shift, its threshold stays a float ``Sub``
before the sign, as do SiMaN's centring and SD-BNN's SE branch. Flatten reorders to PyTorch's C, H, W order so dense
layers keep their weights.

Each op of the graph builds its own layers (``convert/ops``: ``Op.to_keras``, the binary
layers and LCE's rules in ``ops/binary.py`` and ``ops/runtime_rules.py``) through a
``KerasEmitter``; this module walks the graph. TensorFlow is imported only in
``build_keras_model`` (the LCE child process).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, cast

import numpy as np

from bnn_export.binarizers.exports import ActivationExport
from bnn_export.convert.graph import Graph, Node
from bnn_export.convert.ops.binary import BinaryOp
from bnn_export.convert.ops.runtime_rules import LCE_MIN_SCALE, lce_scale_reason

__all__ = [
    "LCE_MIN_SCALE",
    "KerasEmitter",
    "build_keras_model",
    "check_tflite_exportable",
    "lce_float_reason",
    "lce_scale_reason",
    "shift_thresholds_into_producers",
]


def lce_float_reason(n: Node, in_shape: tuple[int, ...]) -> str | None:
    """Why LCE 0.16 cannot run binary layer ``n`` as ``LceBconv2d`` (None if it can)."""
    return cast(BinaryOp, n.definition).lce_float_reason(n, in_shape)


def check_tflite_exportable(graph: Graph) -> None:
    """Refuse what Keras/TFLite convolutions cannot express (cheap: no TensorFlow import)."""
    for n in graph.nodes:
        n.definition.check_keras(n)


def _keras_name(node: str) -> str:
    """A Keras layer name for a graph node: fx names modules of an nn.Sequential model
    "_0", "_1", ..., but a TF name scope must start with a letter or digit."""
    name = node.replace(".", "_")
    return name if name[:1].isalnum() else f"layer{name}"


def _compensations(graph: Graph, value: str, consumer: Node, plan: list[Node]) -> bool:
    """Whether ``consumer`` can take ``value`` shifted by -t: the +t goes on through
    identities and average pools (a window mean of a per-channel constant is that constant
    when no padding is counted) to a residual Add whose other operand is a batch norm used
    only there; those batch norms (each to get +t) are appended to ``plan``."""
    if consumer.op == "identity" or (
        consumer.op == "avgpool"
        and (not any(consumer.attrs.padding) or not consumer.attrs.count_include_pad)
        and not consumer.attrs.ceil_mode
    ):
        users = graph.consumers(consumer.name)
        return (
            consumer.name != graph.output
            and bool(users)
            and all(_compensations(graph, consumer.name, u, plan) for u in users)
        )
    if consumer.op == "add" and len(consumer.inputs) == 2 and consumer.inputs.count(value) == 1:
        other = graph.node(consumer.inputs[1 - consumer.inputs.index(value)])
        if other.op == "bn" and [c.name for c in graph.consumers(other.name)] == [consumer.name]:
            plan.append(other)
            return True
    return False


def shift_thresholds_into_producers(graph: Graph) -> list[str]:
    """Move RSign thresholds out of the binary layers into the graph's float biases, in place
    (LCE has no threshold input; module docstring). A value ``v`` is rewritten when every
    binary layer reading it binarizes at the same threshold t, its producer is an RPReLU
    (zeta) or a batch norm (beta), and every other reader can take v - t
    (``_compensations``). Returns the binary layers whose thresholds moved."""
    moved: list[str] = []
    values = dict.fromkeys(
        n.inputs[0]
        for n in graph.nodes
        if n.definition.binary and n.attrs.activation.kind == "threshold"
    )
    for value in values:
        readers = graph.consumers(value)
        binary = [n for n in readers if n.definition.binary]
        kinds = {n.attrs.activation.kind for n in binary}
        if kinds != {"threshold"} or any(n.inputs.count(value) != 1 for n in binary):
            continue
        t = np.asarray(binary[0].attrs.activation.threshold, np.float32).reshape(-1)
        if any(not np.array_equal(n.attrs.activation.threshold.reshape(-1), t) for n in binary):
            continue
        producer = graph.node(value)
        if producer.op not in ("rprelu", "bn") or value == graph.output:
            continue
        plan: list[Node] = []
        if not all(_compensations(graph, value, n, plan) for n in readers if n not in binary):
            continue
        if producer.op == "rprelu":
            zeta = producer.attrs.zeta.astype(np.float32) - t
            producer.attrs = dataclasses.replace(producer.attrs, zeta=zeta)
        else:
            beta = producer.attrs.beta.astype(np.float32) - t
            producer.attrs = dataclasses.replace(producer.attrs, beta=beta)
        for bn in plan:
            bn.attrs = dataclasses.replace(bn.attrs, beta=bn.attrs.beta.astype(np.float32) + t)
        for n in binary:
            n.attrs = dataclasses.replace(n.attrs, activation=ActivationExport("sign"))
            moved.append(n.name)
    return moved


class KerasEmitter:
    """The Keras model under construction, handed to each op's ``to_keras``: the tensor
    of every graph node built so far, weights to set once the model exists, the binary
    layers kept float, and the modules (``keras``, ``tf``, ``lq``) ops build with."""

    def __init__(self, graph: Graph, keras: Any, tf: Any, lq: Any) -> None:
        self.keras, self.tf, self.lq = keras, tf, lq
        c, h, w = graph.input_shape
        self.model_input = keras.Input(shape=(h, w, c), batch_size=1, name="input")
        self.shapes = graph.shapes()
        self.tensors: dict[str, Any] = {}
        self.fallbacks: list[str] = []  # binary layers that stay float convs
        self.layer_weights: list[tuple[Any, list[np.ndarray]]] = []

    def input(self, node: Node, i: int = 0) -> Any:
        return self.tensors[node.inputs[i]]

    def in_shape(self, node: Node, i: int = 0) -> tuple[int, ...]:
        return self.shapes[node.inputs[i]]

    def name(self, node: Node) -> str:
        return _keras_name(node.name)

    def set_weights(self, layer: Any, weights: list[Any]) -> None:
        """Weights for ``layer``, set when the model is built."""
        self.layer_weights.append((layer, weights))


def build_keras_model(graph: Graph) -> tuple[Any, list[str]]:
    """(tf_keras.Model, names of binary layers that stay float convs)."""
    check_tflite_exportable(graph)
    graph = copy.deepcopy(graph)
    shift_thresholds_into_producers(graph)
    import larq as lq
    import tensorflow as tf
    import tf_keras as keras

    e = KerasEmitter(graph, keras, tf, lq)
    for n in graph.nodes:
        e.tensors[n.name] = n.definition.to_keras(n, e)
    model = keras.Model(e.model_input, e.tensors[graph.output], name="bnn_export")
    for layer, weights in e.layer_weights:
        layer.set_weights([np.asarray(v, np.float32) for v in weights])
    return model, e.fallbacks
