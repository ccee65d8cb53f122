"""The activation modules a user needs to write a BNN block by hand (ReActNet's RSign and
RPReLU), beside ``BinaryConv2d`` / ``BinaryLinear``.

Reference: Liu, Shen, Savvides, Xing, Cheng, "ReActNet: Towards Precise Binary Neural
Network with Generalized Activation Functions", ECCV 2020 (section 3.2: RSign and RPReLU
with learnable per-channel shifts).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bnn_export.binarizers.torch_impl import ste_sign


def _per_channel(p: Tensor, x: Tensor) -> Tensor:
    """A [C] parameter shaped to broadcast over x's channel axis (NCHW or NC)."""
    return p.reshape(1, -1, *([1] * (x.dim() - 2)))


class RSign(nn.Module):
    """Sign with a learnable per-channel threshold: ``+1 where x >= threshold[c], else -1``.

    The backward pass is the clipped straight-through estimator (gradient where
    ``|x - threshold| <= 1``), for the input and for the threshold. At export, an RSign
    that feeds binary layers becomes the threshold those layers' binarize step applies
    (LCE's quantize, our ``BinaryConv2d`` op), not a float op; the binary layers after
    it must use a binarizer whose activation is a plain sign (ste, irnet, equal_bits, gwt).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.threshold = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return ste_sign(x - _per_channel(self.threshold, x))

    def extra_repr(self) -> str:
        return str(self.channels)


class RPReLU(nn.Module):
    """ReActNet's RPReLU: ``prelu(x - gamma[c], slope[c]) + zeta[c]``, every term learnable
    per channel (slope starts at 0.25 like ``nn.PReLU``, the shifts at 0)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.gamma = nn.Parameter(torch.zeros(channels))
        self.prelu = nn.PReLU(channels)
        self.zeta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        shifted = x - _per_channel(self.gamma, x)
        return self.prelu(shifted) + _per_channel(self.zeta, x)

    def extra_repr(self) -> str:
        return str(self.channels)
