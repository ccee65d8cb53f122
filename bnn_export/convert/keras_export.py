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

Activation preprocessing (per-channel threshold, SiMaN's centring, SD-BNN's SE branch)
stays float ops before the sign. Flatten reorders to PyTorch's C, H, W order so dense
layers keep their weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bnn_export.convert.graph import Graph, Node
from bnn_export.errors import BnnExportError
from bnn_export.geometry import minimal_pads


def _keras_name(node: str) -> str:
    """A Keras layer name for a graph node: fx names modules of an nn.Sequential model
    "_0", "_1", ..., but a TF name scope must start with a letter or digit."""
    name = node.replace(".", "_")
    return name if name[:1].isalnum() else f"layer{name}"


def _hwio(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0))).astype(np.float32)


#: LCE's converter treats a kernel as binary only if every output channel's |scale| is
#: above float32's epsilon (larq_compute_engine/mlir/transforms: IsBinaryFilter).
LCE_MIN_SCALE = float(np.finfo(np.float32).eps)


def lce_scale_reason(scale: np.ndarray) -> str | None:
    """Why LCE 0.16 keeps a binary layer with per-output-channel weight ``scale`` float
    (None if the scale is fine); shared by the PyTorch and the Larq route."""
    if float(np.abs(scale).min()) <= LCE_MIN_SCALE:
        return "an output channel's weight scale is <= 2^-23 (LCE would silently keep it float)"
    return None


def lce_float_reason(n: Node, in_shape: tuple[int, ...]) -> str | None:
    """Why LCE 0.16 cannot run binary layer ``n`` as ``LceBconv2d`` (None if it can)."""
    a = n.attrs
    if reason := lce_scale_reason(a["weights"].scale):
        return reason
    if n.op == "blinear":
        return None
    if a["groups"] > 1:
        return "grouped (LCE's default kernel cannot run grouped binary convs)"
    k, s, p, d = a["kernel"], a["stride"], a["padding"], _dilation(a)
    pad_value = float(a["pad_value"])
    if any(p) and pad_value == 0.0 and not _lce_same(k, s, p, d, in_shape, pad_value):
        return "zero padding that LCE cannot fuse"
    return None


def _lce_same(
    k: tuple[int, int], s: tuple[int, int], p: tuple[int, int], d: tuple[int, int],
    in_shape: tuple[int, ...], pad_value: float,
) -> bool:  # fmt: skip
    """LCE's fused 'same' padding applies: stride 1, odd kernel, p = d*(k-1)/2; with pad
    value 0 also a map no smaller than the kernel's span (LCE's zero-padding correction is
    wrong there: 3x3 'same' on 2x2, found by tests/test_fuzz_export.py)."""
    return all(
        s[i] == 1 and k[i] % 2 == 1 and p[i] == d[i] * (k[i] - 1) // 2
        and (pad_value != 0.0 or in_shape[2 + i] >= d[i] * (k[i] - 1) + 1)
        for i in range(2)
    )  # fmt: skip


def _dilation(a: dict[str, Any]) -> tuple[int, int]:
    """Dilation where it matters: 1 along a kernel of size 1 (Keras rejects dilation > 1 with
    stride > 1 even then)."""
    return (
        int(a["dilation"][0]) if a["kernel"][0] > 1 else 1,
        int(a["dilation"][1]) if a["kernel"][1] > 1 else 1,
    )


def check_tflite_exportable(graph: Graph) -> None:
    """Refuse what Keras/TFLite convolutions cannot express (cheap: no TensorFlow import)."""
    for n in graph.nodes:
        if n.op in ("conv", "bconv"):
            s, d = n.attrs["stride"], _dilation(n.attrs)
            if max(s) > 1 and max(d) > 1:
                raise BnnExportError(
                    f"layer {n.attrs.get('module', n.name)!r}: stride {tuple(s)} together with "
                    f"dilation {tuple(d)} has no TFLite equivalent (Keras convolutions take one "
                    "or the other)",
                    hint="use stride 1 (and pool) or dilation 1 in that layer, or export with "
                    "--format onnx",
                )


def build_keras_model(graph: Graph) -> tuple[Any, list[str]]:
    """(tf_keras.Model, names of binary layers that stay float convs)."""
    check_tflite_exportable(graph)
    import larq as lq
    import tensorflow as tf
    import tf_keras as keras

    c, h, w = graph.input_shape
    inputs = keras.Input(shape=(h, w, c), batch_size=1, name="input")
    tensors: dict[str, Any] = {}
    shapes = graph.shapes()
    fallbacks: list[str] = []
    layer_weights: list[tuple[Any, list[np.ndarray]]] = []

    def clip(x: Any, name: str) -> Any:
        return keras.layers.Lambda(lambda t: tf.clip_by_value(t, -1.0, 1.0), name=name)(x)

    for n in graph.nodes:
        a = n.attrs
        name = _keras_name(n.name)
        if n.op == "input":
            tensors[n.name] = inputs
            continue
        x = tensors[n.inputs[0]]
        in_shape = shapes[n.inputs[0]]
        if n.op == "conv":
            if a.get("pre_hardtanh"):
                x = clip(x, f"{name}_hardtanh")
            # minimal pads: LCE 0.16 turns a symmetric Pad + VALID stride-2 conv into "same"
            # (which pads bottom/right), shifting every window (float convs too)
            pads = [minimal_pads(in_shape[2 + i], a["kernel"][i], a["stride"][i], a["padding"][i],
                                  _dilation(a)[i]) for i in range(2)]  # fmt: skip
            if any(any(p) for p in pads):
                x = keras.layers.ZeroPadding2D(tuple(pads), name=f"{name}_pad")(x)
            layer = keras.layers.Conv2D(
                a["weight"].shape[0], a["kernel"], strides=a["stride"], padding="valid",
                dilation_rate=_dilation(a), groups=a["groups"], use_bias=a["bias"] is not None, name=name,
            )  # fmt: skip
            y = layer(x)
            layer_weights.append(
                (layer, [_hwio(a["weight"])] + ([a["bias"]] if a["bias"] is not None else []))
            )
        elif n.op == "linear":
            if a.get("pre_hardtanh"):
                x = clip(x, f"{name}_hardtanh")
            layer = keras.layers.Dense(
                a["weight"].shape[0], use_bias=a["bias"] is not None, name=name
            )
            y = layer(x)
            layer_weights.append(
                (layer, [a["weight"].T.copy()] + ([a["bias"]] if a["bias"] is not None else []))
            )
        elif n.op in ("bconv", "blinear"):
            y, float_conv = _binary(n, x, in_shape, name, layer_weights, lq, tf, keras)
            if float_conv:
                fallbacks.append(a.get("module", n.name))
        elif n.op == "bn":
            layer = keras.layers.BatchNormalization(epsilon=a["eps"], name=name)
            y = layer(x)
            layer_weights.append((layer, [a["gamma"], a["beta"], a["mean"], a["var"]]))
        elif n.op == "maxpool":
            y = keras.layers.MaxPooling2D(a["kernel"], a["stride"], padding="valid", name=name)(x)
        elif n.op == "avgpool":
            y = keras.layers.AveragePooling2D(a["kernel"], a["stride"], padding="valid", name=name)(
                x
            )
        elif n.op == "gap":
            y = keras.layers.GlobalAveragePooling2D(keepdims=True, name=name)(x)
        elif n.op == "flatten":
            y = (
                x
                if len(in_shape) == 2
                else keras.layers.Flatten(name=name)(
                    keras.layers.Permute((3, 1, 2), name=f"{name}_to_chw")(x)
                )
            )
        elif n.op == "add":
            y = keras.layers.Add(name=name)([x, tensors[n.inputs[1]]])
        elif n.op == "relu":
            y = keras.layers.ReLU(name=name)(x)
        elif n.op == "hardtanh":
            y = clip(x, name)
        elif n.op == "identity":
            y = x
        else:
            raise BnnExportError(f"node {n.name!r}: op {n.op!r} has no TFLite export")
        tensors[n.name] = y
    model = keras.Model(inputs, tensors[graph.output], name="bnn_export")
    for layer, weights in layer_weights:
        layer.set_weights([np.asarray(v, np.float32) for v in weights])
    return model, fallbacks


def _preprocess(n: Node, x: Any, rank: int, name: str, tf: Any, keras: Any) -> Any:
    act = n.attrs["activation"]
    if act.kind == "sign":
        return x
    if act.kind == "threshold":
        thr = act.threshold.astype(np.float32)
        return keras.layers.Lambda(lambda t: t - thr, name=f"{name}_threshold")(x)
    if act.kind == "center":
        axes = [1, 2, 3] if rank == 4 else [1]
        return keras.layers.Lambda(lambda t: t - tf.reduce_mean(t, axis=axes, keepdims=True),
                                   name=f"{name}_center")(x)  # fmt: skip
    if act.kind == "se":
        w1, w2 = act.se_w1.T.astype(np.float32), act.se_w2.T.astype(np.float32)

        def se(t: Any) -> Any:
            pooled = tf.reduce_mean(t, axis=[1, 2]) if rank == 4 else t
            s = tf.sigmoid(tf.matmul(tf.nn.relu(tf.matmul(pooled, w1)), w2))
            return t + (s[:, None, None, :] if rank == 4 else s)

        return keras.layers.Lambda(se, name=f"{name}_se")(x)
    raise BnnExportError(
        f"layer {n.attrs.get('module', name)!r}: activation {act.kind!r} has no TFLite export"
    )


def _binary(
    n: Node,
    x: Any,
    in_shape: tuple[int, ...],
    name: str,
    layer_weights: list[Any],
    lq: Any,
    tf: Any,
    keras: Any,
) -> tuple[Any, bool]:
    a = n.attrs
    w = a["weights"]
    kernel = (w.bits * w.scale.reshape(-1, *[1] * (w.bits.ndim - 1))).astype(np.float32)
    x = _preprocess(n, x, len(in_shape), name, tf, keras)
    float_conv = lce_float_reason(n, in_shape) is not None
    if n.op == "blinear":  # LCE has no binary dense op: a 1x1 binary conv on a (1, 1, F) map
        x = keras.layers.Reshape((1, 1, in_shape[1]), name=f"{name}_as_map")(x)
        if float_conv:
            x = _exact_sign(x, name, tf, keras)
        conv = lq.layers.QuantConv2D(kernel.shape[0], 1, input_quantizer=None if float_conv else "ste_sign",
                                     kernel_quantizer=None, use_bias=False, name=name)  # fmt: skip
        y = conv(x)
        layer_weights.append((conv, [_hwio(kernel[:, :, None, None])]))
        return keras.layers.Reshape((kernel.shape[0],), name=f"{name}_flat")(y), float_conv
    k, s, p, d = a["kernel"], a["stride"], a["padding"], _dilation(a)
    pad_value = float(a["pad_value"])
    common = dict(filters=kernel.shape[0], kernel_size=k, strides=s, dilation_rate=d, groups=a["groups"],
                  use_bias=False, kernel_quantizer=None, name=name)  # fmt: skip
    pads = [minimal_pads(in_shape[2 + i], k[i], s[i], p[i], d[i]) for i in range(2)]
    paddings = [[0, 0], list(pads[0]), list(pads[1]), [0, 0]]
    if float_conv:
        x = _exact_sign(x, name, tf, keras)
        if any(p):
            x = keras.layers.Lambda(
                lambda t: tf.pad(t, paddings, constant_values=pad_value), name=f"{name}_pad"
            )(x)
        conv = lq.layers.QuantConv2D(input_quantizer=None, padding="valid", **common)
    elif not any(p) or _lce_same(k, s, p, d, in_shape, pad_value):
        conv = lq.layers.QuantConv2D(input_quantizer="ste_sign", padding="same" if any(p) else "valid",
                                     pad_values=pad_value, **common)  # fmt: skip
    else:  # pad value +1 (0 is a float fallback): pad the float input with +1.0 before the sign
        x = keras.layers.Lambda(
            lambda t: tf.pad(t, paddings, constant_values=1.0), name=f"{name}_pad"
        )(x)
        conv = lq.layers.QuantConv2D(input_quantizer="ste_sign", padding="valid", **common)
    y = conv(x)
    layer_weights.append((conv, [_hwio(kernel)]))
    return y, float_conv


def _exact_sign(x: Any, name: str, tf: Any, keras: Any) -> Any:
    """+1 where x >= 0, else -1, in a form LCE's converter leaves alone (it rewrites
    ``where(x >= 0, 1, -1)`` into its quantize ops, and then the conv into LceBconv2d)."""
    return keras.layers.Lambda(
        lambda t: tf.cast(t >= 0, tf.float32) * 2.0 - 1.0, name=f"{name}_sign"
    )(x)
