"""Larq model zoo: the same architectures as ``torch_zoo``, layer for layer, NHWC.

Layer names are the PyTorch module paths with ``.`` replaced by ``_`` (``conv1``,
``layers_0_shortcut_conv``, ``features_3``), so checkpoints and weight transfer are
stable. Batch norms use PyTorch's defaults (eps 1e-5, momentum 0.1 == Keras 0.9).
Binary convs and the digits model's binary dense layer take binarized inputs and
pad them with ``pad_value`` (+1 or 0); with binarizer ``none`` they are float layers
with hardtanh inputs and zero padding, as on the PyTorch side.
"""

from __future__ import annotations

from typing import Any

import larq as lq
import tensorflow as tf
import tf_keras as keras

from bnn_export.binarizers import BinarizerConfig
from bnn_export.binarizers import larq_impl as bz
from bnn_export.models.larq_layers import QuantDense1x1, TorchPadQuantConv2D

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # PyTorch momentum 0.1


def kname(torch_path: str) -> str:
    """The Keras layer name of a PyTorch module path."""
    return torch_path.replace(".", "_")


def bn(x: tf.Tensor, path: str) -> tf.Tensor:
    return keras.layers.BatchNormalization(
        epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=kname(path)
    )(x)


def float_conv(x: tf.Tensor, filters: int, kernel: int, path: str) -> tf.Tensor:
    padding = "same" if kernel > 1 else "valid"
    return keras.layers.Conv2D(filters, kernel, padding=padding, use_bias=False, name=kname(path))(
        x
    )


def binary_conv(
    x: tf.Tensor,
    filters: int,
    path: str,
    *,
    binarizer: BinarizerConfig,
    pad_value: float,
    stride: int = 1,
) -> tf.Tensor:
    """3x3 binary conv, padding 1 (binarized input padded with ``pad_value``)."""
    name = kname(path)
    pad = pad_value if binarizer.binary else 0.0
    kwargs = dict(
        input_quantizer=bz.activation_quantizer(binarizer, name=f"{name}_input_quantizer"),
        kernel_quantizer=bz.weight_quantizer(binarizer, name=f"{name}_kernel_quantizer"),
        strides=stride,
        use_bias=False,
        pad_values=pad,
        name=name,
    )
    if stride == 1:  # Keras "same" == PyTorch padding 1 here, and LCE's favourite form
        return lq.layers.QuantConv2D(filters, 3, padding="same", **kwargs)(x)
    # +1 padding goes before the sign (after SiMaN's centring / SD-BNN's shift): LCE then
    # converts the conv to LceBconv2d; other pad values pad the binarized input.
    return TorchPadQuantConv2D(filters, 3, pad_before_sign=pad == 1.0, **kwargs)(x)


def binary_dense(x: tf.Tensor, units: int, path: str, *, binarizer: BinarizerConfig) -> tf.Tensor:
    name = kname(path)
    return QuantDense1x1(
        units,
        input_quantizer=bz.activation_quantizer(binarizer, name=f"{name}_input_quantizer"),
        kernel_quantizer=bz.weight_quantizer(binarizer, name=f"{name}_kernel_quantizer"),
        use_bias=False,
        name=name,
    )(x)


def digits_net(
    inputs: tf.Tensor, *, binarizer: BinarizerConfig, num_classes: int, pad_value: float
) -> tf.Tensor:
    width = 64
    x = bn(float_conv(inputs, 32, 3, "conv0"), "bn0")
    x = binary_conv(x, width, "conv1", binarizer=binarizer, pad_value=pad_value)
    x = keras.layers.MaxPooling2D(2, name="pool1")(bn(x, "bn1"))
    x = binary_conv(x, width, "conv2", binarizer=binarizer, pad_value=pad_value)
    x = keras.layers.MaxPooling2D(2, name="pool2")(bn(x, "bn2"))
    x = keras.layers.Flatten(name="flatten")(x)
    x = bn(binary_dense(x, 128, "fc1", binarizer=binarizer), "bn3")
    return keras.layers.Dense(num_classes, name="fc2")(x)


def bireal_block(
    x: tf.Tensor,
    in_channels: int,
    out_channels: int,
    stride: int,
    path: str,
    *,
    binarizer: BinarizerConfig,
    pad_value: float,
) -> tf.Tensor:
    conv: dict[str, Any] = dict(binarizer=binarizer, pad_value=pad_value)
    out = bn(binary_conv(x, out_channels, f"{path}.conv1", stride=stride, **conv), f"{path}.bn1")
    shortcut = x
    if stride != 1 or in_channels != out_channels:
        if stride > 1:
            shortcut = keras.layers.AveragePooling2D(stride, name=kname(f"{path}.shortcut.pool"))(
                shortcut
            )
        shortcut = float_conv(shortcut, out_channels, 1, f"{path}.shortcut.conv")
        shortcut = bn(shortcut, f"{path}.shortcut.bn")
    out = keras.layers.Add(name=kname(f"{path}.add1"))([out, shortcut])
    y = bn(binary_conv(out, out_channels, f"{path}.conv2", **conv), f"{path}.bn2")
    return keras.layers.Add(name=kname(f"{path}.add2"))([y, out])


def cifar_resnet(
    inputs: tf.Tensor,
    *,
    binarizer: BinarizerConfig,
    num_classes: int,
    pad_value: float,
    widths: tuple[int, ...],
    blocks: tuple[int, ...],
) -> tf.Tensor:
    x = bn(float_conv(inputs, widths[0], 3, "conv0"), "bn0")
    channels, index = widths[0], 0
    for stage, (width, count) in enumerate(zip(widths, blocks, strict=True)):
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            x = bireal_block(
                x,
                channels,
                width,
                stride,
                f"layers.{index}",
                binarizer=binarizer,
                pad_value=pad_value,
            )
            channels, index = width, index + 1
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.layers.Dense(num_classes, name="fc")(x)


def vgg_small(
    inputs: tf.Tensor, *, binarizer: BinarizerConfig, num_classes: int, pad_value: float
) -> tf.Tensor:
    cfg = [(128, False), (128, True), (256, False), (256, True), (512, False), (512, True)]
    x = bn(float_conv(inputs, cfg[0][0], 3, "conv0"), "bn0")
    index = 0
    for width, pool in cfg[1:]:
        x = binary_conv(x, width, f"features.{index}", binarizer=binarizer, pad_value=pad_value)
        index += 1
        if pool:
            x = keras.layers.MaxPooling2D(2, name=kname(f"features.{index}"))(x)
            index += 1
        x = bn(x, f"features.{index}")
        index += 1
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.layers.Dense(num_classes, name="fc")(x)
