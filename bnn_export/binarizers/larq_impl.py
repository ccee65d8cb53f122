"""Larq (tf-keras) implementations of the registered binarizers.

Mirrors ``torch_impl``: each binarizer name maps to a weight quantizer (a larq
``Quantizer``: ``call(kernel)`` gives the effective kernel the convolution uses,
``export(kernel)`` gives bits and scale in PyTorch layout) and an activation quantizer
(``call(x)`` gives +-1, ``export()`` says how inference binarizes). Kernels are Keras
layout, (kh, kw, I, O) for convs and (I, O) for dense layers; per-output-channel
statistics reduce over every axis but the last. Layers, the trainer and the model
builders use only this interface (``set_schedule``, ``no_weight_decay``), never names.

Every class is registered as a Keras custom object (and under a ``bnn_export>`` alias)
so models serialize with ``get_config``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
from larq import quantizers as lq_quantizers
from larq import utils as lq_utils

from bnn_export.binarizers import BinarizerConfig
from bnn_export.binarizers import get as get_binarizer
from bnn_export.binarizers import larq_math as lm
from bnn_export.binarizers.exports import ActivationExport, WeightExport
from bnn_export.errors import BnnExportError


def register(cls: type) -> type:
    """Register a quantizer class with Keras (by class name and a package alias)."""
    lq_utils.register_keras_custom_object(cls)
    lq_utils.register_alias(f"bnn_export>{cls.__name__}")(cls)
    return cls


def to_torch_layout(a: np.ndarray) -> np.ndarray:
    """(kh, kw, I, O) -> (O, I, kh, kw); (I, O) -> (O, I)."""
    if a.ndim == 4:
        return np.ascontiguousarray(a.transpose(3, 2, 0, 1))
    if a.ndim == 2:
        return np.ascontiguousarray(a.T)
    raise BnnExportError(f"expected a conv (4-d) or dense (2-d) kernel, got shape {a.shape}")


def from_torch_layout(a: np.ndarray) -> np.ndarray:
    """(O, I, kh, kw) -> (kh, kw, I, O); (O, I) -> (I, O)."""
    if a.ndim == 4:
        return np.ascontiguousarray(a.transpose(2, 3, 1, 0))
    if a.ndim == 2:
        return np.ascontiguousarray(a.T)
    raise BnnExportError(f"expected a conv (4-d) or dense (2-d) weight, got shape {a.shape}")


def channel_axes(rank: int) -> list[int]:
    """Axes a per-output-channel statistic reduces over: all but the last."""
    return list(range(rank - 1))


def _np(x: Any) -> np.ndarray:
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float32)


class _ConfiguredQuantizer(lq_quantizers.Quantizer):
    """A larq quantizer carrying a ``BinarizerConfig`` (serialized as a dict)."""

    def __init__(self, binarizer: BinarizerConfig | dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config_ = get_binarizer(binarizer)

    @property
    def params(self) -> dict[str, Any]:
        return self.config_.params

    def set_schedule(self, epoch: int, epochs: int) -> None:
        """Called by the trainer at the start of every epoch (0-based)."""

    def torch_params(self) -> dict[str, tf.Variable]:
        """Variables by their PyTorch parameter name (for weight transfer)."""
        return {}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "binarizer": self.config_.to_dict()}


class WeightQuantizer(_ConfiguredQuantizer):
    """Base class: ``call(kernel)`` -> effective kernel; ``export(kernel)``."""

    precision = 1
    #: The trainer applies no weight decay to kernels quantized by this (SiMaN's rule).
    no_weight_decay: bool = False

    def export(self, kernel: Any) -> WeightExport:
        raise NotImplementedError

    def _bits_export(self, bits: Any, scale: Any | None = None) -> WeightExport:
        b = to_torch_layout(_np(bits)).astype(np.int8)
        out = b.shape[0]
        s = np.ones(out, np.float32) if scale is None else _np(scale).reshape(-1)
        return WeightExport(b, np.broadcast_to(s, (out,)).astype(np.float32).copy())


class ActivationQuantizer(_ConfiguredQuantizer):
    precision = 1

    def export(self) -> ActivationExport:
        return ActivationExport("sign")


# --- none: the float baseline ------------------------------------------------------


@register
class FloatWeight(WeightQuantizer):
    """The float baseline: the kernel is used as is."""

    precision = 32

    def call(self, kernel: tf.Tensor) -> tf.Tensor:
        return kernel

    def export(self, kernel: Any) -> WeightExport:
        raise TypeError("a float layer (binarizer 'none') has no binary export")


@register
class HardTanh(ActivationQuantizer):
    """The float baseline's activation: clip to [-1, 1]."""

    precision = 32

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return tf.clip_by_value(x, -1.0, 1.0)

    def export(self) -> ActivationExport:
        raise TypeError("a float layer (binarizer 'none') has no binary export")


# --- ste -----------------------------------------------------------------------------


@register
class SteSignWeight(WeightQuantizer):
    """b = sign(w); gradient passed where |w| <= 1. Exports bits only (scale 1)."""

    def call(self, kernel: tf.Tensor) -> tf.Tensor:
        return lm.ste_sign(kernel)

    def export(self, kernel: Any) -> WeightExport:
        return self._bits_export(lm.sign(tf.convert_to_tensor(_np(kernel))))


@register
class SteSignActivation(ActivationQuantizer):
    """a_b = sign(a); gradient passed where |a| <= 1."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return lm.ste_sign(x)


WEIGHT_QUANTIZERS: dict[str, Callable[..., WeightQuantizer]] = {
    "none": FloatWeight,
    "ste": SteSignWeight,
}
ACTIVATION_QUANTIZERS: dict[str, Callable[..., ActivationQuantizer]] = {
    "none": HardTanh,
    "ste": SteSignActivation,
}


def _missing(config: BinarizerConfig) -> BnnExportError:
    return BnnExportError(
        f"binarizer {config.name!r} has no Larq implementation yet; "
        f"available in larq: {', '.join(WEIGHT_QUANTIZERS)}",
        hint="train it with --framework torch",
    )


def weight_quantizer(config: BinarizerConfig, *, name: str | None = None) -> WeightQuantizer:
    if config.name not in WEIGHT_QUANTIZERS:
        raise _missing(config)
    return WEIGHT_QUANTIZERS[config.name](config, name=name)


def activation_quantizer(
    config: BinarizerConfig, *, name: str | None = None
) -> ActivationQuantizer:
    if config.name not in ACTIVATION_QUANTIZERS:
        raise _missing(config)
    return ACTIVATION_QUANTIZERS[config.name](config, name=name)
