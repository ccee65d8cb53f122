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
- otherwise with pad value 0 (e.g. strided): sign, zero padding, then a float conv with
  the +-1 kernel: exact, but LCE keeps it a float CONV_2D. Such layers are reported as
  float fallbacks, never dropped.

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


def _hwio(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0))).astype(np.float32)


#: LceBconv2d supports groups > 1 only with this many input channels per group (a multiple).
LCE_GROUP_CHANNELS = 32


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
        name = n.name.replace(".", "_")
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
    if n.op == "blinear":  # LCE has no binary dense op: a 1x1 binary conv on a (1, 1, F) map
        x = keras.layers.Reshape((1, 1, in_shape[1]), name=f"{name}_as_map")(x)
        conv = lq.layers.QuantConv2D(kernel.shape[0], 1, input_quantizer="ste_sign", kernel_quantizer=None,
                                     use_bias=False, name=name)  # fmt: skip
        y = conv(x)
        layer_weights.append((conv, [_hwio(kernel[:, :, None, None])]))
        return keras.layers.Reshape((kernel.shape[0],), name=f"{name}_flat")(y), False
    k, s, p, d = a["kernel"], a["stride"], a["padding"], _dilation(a)
    pad_value = float(a["pad_value"])
    common = dict(filters=kernel.shape[0], kernel_size=k, strides=s, dilation_rate=d, groups=a["groups"],
                  use_bias=False, kernel_quantizer=None, name=name)  # fmt: skip
    same = all(s[i] == 1 and k[i] % 2 == 1 and p[i] == d[i] * (k[i] - 1) // 2 for i in range(2))
    if same and pad_value == 0.0 and any(in_shape[2 + i] < d[i] * (k[i] - 1) + 1 for i in range(2)):
        # LCE's zero-padding correction is wrong when the map is smaller than the kernel's
        # span (e.g. 3x3 'same' on 2x2; found by tests/test_fuzz_export.py): take the
        # explicit path below (exact float conv over sign(x) padded with zeros)
        same = False
    # LCE binarizes grouped convs only with a multiple of 32 input channels per group;
    # otherwise it silently emits a float CONV_2D over sign(x) (exact, but not 1-bit)
    float_conv = a["groups"] > 1 and (in_shape[1] // a["groups"]) % LCE_GROUP_CHANNELS != 0
    if not any(p) or same:
        conv = lq.layers.QuantConv2D(input_quantizer="ste_sign", padding="same" if any(p) else "valid",
                                     pad_values=pad_value, **common)  # fmt: skip
    else:
        pads = [minimal_pads(in_shape[2 + i], k[i], s[i], p[i], d[i]) for i in range(2)]
        paddings = [[0, 0], list(pads[0]), list(pads[1]), [0, 0]]
        if pad_value == 1.0:
            x = keras.layers.Lambda(
                lambda t: tf.pad(t, paddings, constant_values=1.0), name=f"{name}_pad"
            )(x)
            conv = lq.layers.QuantConv2D(input_quantizer="ste_sign", padding="valid", **common)
        else:
            x = keras.layers.Lambda(lambda t: tf.where(t >= 0, 1.0, -1.0), name=f"{name}_sign")(x)
            x = keras.layers.Lambda(lambda t: tf.pad(t, paddings), name=f"{name}_pad")(x)
            conv = lq.layers.QuantConv2D(input_quantizer=None, padding="valid", **common)
            float_conv = True
    y = conv(x)
    layer_weights.append((conv, [_hwio(kernel)]))
    return y, float_conv
