"""Larq binary layers that compute exactly what ``models.layers`` computes in PyTorch.

* ``TorchPadQuantConv2D``: a ``QuantConv2D`` padding its binarized input symmetrically
  by (k - 1) // 2 with ``pad_values`` (PyTorch's ``padding=k//2``). For stride 1 this
  equals Keras ``"same"``; for stride 2 on even inputs Keras "same" pads only the
  bottom/right, PyTorch pads both sides, so binary strided convs use this class.
* ``QuantDense1x1``: a binary fully-connected layer written as a 1x1 ``QuantConv2D``
  on a (1, 1, F) view of its input. LCE has no binary dense op: a ``QuantDense``
  converts to a float FullyConnected, a 1x1 binary conv converts to ``LceBconv2d``.
"""

from __future__ import annotations

from typing import Any

import larq as lq
import tensorflow as tf
import tf_keras as keras

from bnn_export.binarizers.larq_impl import ActivationQuantizer, register
from bnn_export.geometry import minimal_pads


@register
class TorchPadQuantConv2D(lq.layers.QuantConv2D):
    """QuantConv2D computing PyTorch's ``padding=(k - 1) // 2`` on its binarized input.

    Only the padding a window actually reads is added: top/left p, bottom/right what the
    last window needs (for a stride-2 3x3 conv on an even input that is (1, 0), where
    Keras "same" would pad (0, 1)). Needs static spatial input sizes.

    ``pad_before_sign``: run the input quantizer's ``preprocess`` stage (SiMaN's
    centring, SD-BNN's SE shift: they read the unpadded map), pad with ``pad_values``,
    then its elementwise ``binarize`` stage and a VALID conv. Exact when the pad value is
    +1 (binarize(+1) = +1); LCE then converts the conv to ``LceBconv2d`` (a float Pad
    before ``LceQuantize``), whereas it cannot convert a pad of the binarized input that
    differs from "same".
    """

    def __init__(self, *args: Any, pad_before_sign: bool = False, **kwargs: Any) -> None:
        self.pad_before_sign = pad_before_sign
        kwargs["padding"] = "valid" if pad_before_sign else "same"
        super().__init__(*args, **kwargs)
        self._is_native_padding = pad_before_sign
        if pad_before_sign and not isinstance(self.input_quantizer, ActivationQuantizer):
            raise TypeError(f"{self.name}: pad_before_sign needs a bnn_export input quantizer")

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        if not self.pad_before_sign:
            return super().call(inputs)
        quantizer = self.input_quantizer
        x = quantizer(inputs, stage="preprocess")
        x = tf.pad(x, self._get_padding_same(inputs), constant_values=self.pad_values)
        x = quantizer(x, stage="binarize")
        # BaseLayer.call would quantize again: run the rest of the chain (quantized
        # kernel scope, VALID conv) on the binarized input directly.
        with lq.context.quantized_scope(True):
            return super(lq.layers_base.BaseLayer, self).call(x)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("padding", None)
        return {**config, "pad_before_sign": self.pad_before_sign}

    def _pads(self, spatial: list[int | None]) -> list[list[int]]:
        pads = []
        for size, k, d, s in zip(
            spatial, self.kernel_size, self.dilation_rate, self.strides, strict=True
        ):
            if size is None:
                raise ValueError(f"{self.name}: PyTorch-style padding needs static input sizes")
            pads.append(list(minimal_pads(size, k, s, (k - 1) * d // 2, d)))
        return pads

    def _get_padding_same(self, inputs: tf.Tensor) -> list[list[int]]:
        return [[0, 0], *self._pads(inputs.shape.as_list()[1:3]), [0, 0]]

    def _get_padding_same_shape(self, input_shape: Any) -> tf.TensorShape:
        shape = tf.TensorShape(input_shape).as_list()
        pads = self._pads(shape[1:3])
        spatial = [s + p[0] + p[1] for s, p in zip(shape[1:3], pads, strict=True)]
        return tf.TensorShape([shape[0], *spatial, shape[3]])


@register
class QuantDense1x1(lq.layers.QuantConv2D):
    """A binary dense layer (N, F) -> (N, O) computed as a 1x1 binary conv."""

    def __init__(self, units: int, **kwargs: Any) -> None:
        kwargs.pop("filters", None)
        kwargs.pop("kernel_size", None)
        super().__init__(units, 1, **kwargs)
        self.input_spec = keras.layers.InputSpec(ndim=2)

    def build(self, input_shape: Any) -> None:
        features = tf.TensorShape(input_shape).as_list()[-1]
        super().build(tf.TensorShape([None, 1, 1, features]))
        self.input_spec = keras.layers.InputSpec(ndim=2, axes={-1: features})

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        x = tf.reshape(inputs, [-1, 1, 1, inputs.shape[-1]])
        y = super().call(x)
        return tf.reshape(y, [-1, self.filters])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["units"] = config.pop("filters")
        config.pop("kernel_size", None)
        return config


def is_binary_layer(layer: keras.layers.Layer) -> bool:
    """A layer whose kernel goes through one of our weight quantizers."""
    from bnn_export.binarizers.larq_impl import WeightQuantizer

    return isinstance(getattr(layer, "kernel_quantizer", None), WeightQuantizer)
