"""PyTorch implementations of the registered binarizers.

Each binarizer name maps to a weight quantizer (``forward(w)`` gives the effective
weight the convolution uses; ``export(w)`` gives bits and scale) and an activation
quantizer (``forward(x)`` gives +-1; ``export()`` says how inference binarizes).
Layers and the trainer use only this interface (``set_schedule``,
``no_weight_decay``), never binarizer names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bnn_export.binarizers import BinarizerConfig
from bnn_export.binarizers.exports import ActivationExport, WeightExport


def sign_pm1(x: Tensor) -> Tensor:
    """sign with the Larq/LCE convention: x >= 0 -> +1, else -1 (never 0)."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class _ClippedSTESign(torch.autograd.Function):
    """Forward sign(x); backward passes the gradient where |x| <= 1."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return sign_pm1(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def ste_sign(x: Tensor) -> Tensor:
    return _ClippedSTESign.apply(x)  # type: ignore[no-any-return]


def _to_numpy(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


class WeightQuantizer(nn.Module):
    """Base class. Subclasses override ``forward`` and ``export``."""

    #: The trainer puts latent weights of layers with this flag in a group without
    #: weight decay (SiMaN's rule).
    no_weight_decay: bool = False

    def __init__(self, shape: tuple[int, ...], config: BinarizerConfig) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.config = config

    def set_schedule(self, epoch: int, epochs: int) -> None:
        """Called by the trainer at the start of every epoch (0-based)."""

    def export(self, w: Tensor) -> WeightExport:
        raise NotImplementedError


class ActivationQuantizer(nn.Module):
    def __init__(self, channels: int, config: BinarizerConfig) -> None:
        super().__init__()
        self.channels = channels
        self.config = config

    def set_schedule(self, epoch: int, epochs: int) -> None:
        """Called by the trainer at the start of every epoch (0-based)."""

    def export(self) -> ActivationExport:
        return ActivationExport("sign")


# --- none: the float baseline ------------------------------------------------------


class FloatWeight(WeightQuantizer):
    def forward(self, w: Tensor) -> Tensor:
        return w

    def export(self, w: Tensor) -> WeightExport:
        raise TypeError("a float layer (binarizer 'none') has no binary export")


class HardTanh(ActivationQuantizer):
    """The float baseline's activation: clip to [-1, 1], the float analogue of sign."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.clamp(x, -1.0, 1.0)

    def export(self) -> ActivationExport:
        raise TypeError("a float layer (binarizer 'none') has no binary export")


# --- ste -----------------------------------------------------------------------------


class SteSignWeight(WeightQuantizer):
    """b = sign(w); gradient passed where |w| <= 1. Exports bits only (scale 1)."""

    def forward(self, w: Tensor) -> Tensor:
        return ste_sign(w)

    def export(self, w: Tensor) -> WeightExport:
        bits = _to_numpy(sign_pm1(w)).astype(np.int8)
        return WeightExport(bits, np.ones(self.shape[0], dtype=np.float32))


class SteSignActivation(ActivationQuantizer):
    """a_b = sign(a); gradient passed where |a| <= 1."""

    def forward(self, x: Tensor) -> Tensor:
        return ste_sign(x)


WEIGHT_QUANTIZERS: dict[str, Callable[[tuple[int, ...], BinarizerConfig], WeightQuantizer]] = {
    "none": FloatWeight,
    "ste": SteSignWeight,
}
ACTIVATION_QUANTIZERS: dict[str, Callable[[int, BinarizerConfig], ActivationQuantizer]] = {
    "none": HardTanh,
    "ste": SteSignActivation,
}


def weight_quantizer(config: BinarizerConfig, shape: tuple[int, ...]) -> WeightQuantizer:
    return WEIGHT_QUANTIZERS[config.name](tuple(shape), config)


def activation_quantizer(config: BinarizerConfig, channels: int) -> ActivationQuantizer:
    return ACTIVATION_QUANTIZERS[config.name](channels, config)
