"""PyTorch implementations of the registered binarizers.

Each binarizer name maps to a weight quantizer (``forward(w)`` gives the effective
weight the convolution uses; ``export(w)`` gives bits and scale) and an activation
quantizer (``forward(x)`` gives +-1; ``export()`` says how inference binarizes).
Layers and the trainer use only this interface (``set_schedule``,
``no_weight_decay``, ``no_weight_decay_parameters``), never binarizer names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bnn_export.binarizers import BinarizerConfig, count_of_top, ede_schedule, siman_percent
from bnn_export.binarizers.exports import ActivationExport, WeightExport


def sign_pm1(x: Tensor) -> Tensor:
    """sign with the Larq/LCE convention: x >= 0 -> +1, else -1 (never 0; NaN -> -1)."""
    # exactly +-1 in any float dtype; half the time of torch.where(x >= 0, 1, -1) on CPU,
    # whose scalar-broadcast select was ~20% of a binary ResNet-20 forward
    return (x >= 0).to(x.dtype).mul_(2).sub_(1)


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
    #: set by ``step_schedule`` (an export warns about a schedule never stepped)
    schedule_stepped: bool = False

    def __init__(self, shape: tuple[int, ...], config: BinarizerConfig) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.config = config

    def set_schedule(self, epoch: int, epochs: int) -> None:
        """Called by the trainer at the start of every epoch (0-based)."""

    def no_weight_decay_parameters(self) -> list[nn.Parameter]:
        """The quantizer's own parameters the trainer keeps out of weight decay (SiMaN's
        alpha); the latent weight itself is governed by ``no_weight_decay``."""
        return []

    def export(self, w: Tensor) -> WeightExport:
        raise NotImplementedError

    def score(self, w: Tensor) -> Tensor:
        """The value whose order decides the bits (bit +1 for the larger values): what
        optimal-transport bit-ratio fixing sorts. Default: the latent weight itself."""
        return w.detach()


class ActivationQuantizer(nn.Module):
    #: set by ``step_schedule`` (an export warns about a schedule never stepped)
    schedule_stepped: bool = False

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


# --- shared pieces ---------------------------------------------------------------------


def per_channel(w: Tensor) -> Tensor:
    """[O, ...] -> [O, n]."""
    return w.reshape(w.shape[0], -1)


def _channel_view(stat: Tensor, w: Tensor) -> Tensor:
    """Broadcast a per-channel [O] statistic against a weight [O, ...]."""
    return stat.reshape(-1, *([1] * (w.dim() - 1)))


def standardize_per_channel(w: Tensor, *, unbiased: bool = False, eps: float = 0.0) -> Tensor:
    """(w - mean_o) / sd_o over each output channel.

    sd_o is the standard deviation over n - 1 (``unbiased``, as the official IR-Net and
    SiMaN code: torch's default) or n (population; GWT, which has no official code),
    n - 1 falling back to n for a channel of one weight. With ``eps`` > 0 it is
    sqrt(var_o + eps) (SiMaN's form), otherwise std_o floored at 1e-8.
    """
    flat = per_channel(w)
    correction = 1 if unbiased and flat.shape[1] > 1 else 0
    mean = flat.mean(dim=1, keepdim=True)
    if eps > 0:
        sd = torch.sqrt(flat.var(dim=1, correction=correction, keepdim=True) + eps)
    else:
        sd = flat.std(dim=1, correction=correction, keepdim=True).clamp_min(1e-8)
    return ((flat - mean) / sd).reshape(w.shape)


def rank_along_rows(x: Tensor) -> Tensor:
    """Rank of each entry within its row (0 = smallest); ties broken by position."""
    order = torch.argsort(x, dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(x.shape[1], device=x.device).expand_as(order))
    return ranks


def ot_bits(rows: Tensor, p: float, prune_rate: float = 0.0) -> Tensor:
    """Optimal transport to a Bernoulli(p) prior, which in 1-D is a sort.

    Each row's top round(p*n) entries become +1, the rest -1. With ``prune_rate`` k > 0
    (p = 0.5): the bottom floor((1-k)/2*n) become -1, the top n - floor((1+k)/2*n) +1,
    and the middle ranks 0.
    """
    n = rows.shape[1]
    ranks = rank_along_rows(rows.detach())
    if prune_rate > 0:
        low = int(np.floor((1 - prune_rate) / 2 * n))
        high = int(np.floor((1 + prune_rate) / 2 * n))
        out = torch.zeros_like(rows)
        out[ranks < low] = -1.0
        out[ranks >= high] = 1.0
        return out
    return torch.where(ranks >= n - count_of_top(p, n), 1.0, -1.0).to(rows.dtype)


class _EdeSign(torch.autograd.Function):
    """IR-Net's Error Decay Estimator: forward sign, backward k*t*(1 - tanh(t*x)^2)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, t: Tensor, k: Tensor) -> Tensor:
        ctx.save_for_backward(x, t, k)
        return sign_pm1(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        x, t, k = ctx.saved_tensors
        return grad * k * t * (1 - torch.tanh(t * x) ** 2), None, None


class _EdeMixin(nn.Module):
    """Holds EDE's t and k as buffers (saved with the model, updated per epoch)."""

    config: BinarizerConfig
    ede_t: Tensor
    ede_k: Tensor

    def _init_ede(self) -> None:
        t, k = ede_schedule(0, 1, self.config.params["t_min"], self.config.params["t_max"])
        self.register_buffer("ede_t", torch.tensor(t))
        self.register_buffer("ede_k", torch.tensor(k))

    def set_schedule(self, epoch: int, epochs: int) -> None:
        t, k = ede_schedule(epoch, epochs, self.config.params["t_min"], self.config.params["t_max"])
        self.ede_t.fill_(t)
        self.ede_k.fill_(k)

    def ede_sign(self, x: Tensor) -> Tensor:
        return _EdeSign.apply(x, self.ede_t, self.ede_k)  # type: ignore[no-any-return]


# --- irnet ---------------------------------------------------------------------------


class IrNetWeight(_EdeMixin, WeightQuantizer):
    """IR-Net Libra-PB: w_hat = (w - mean_o)/std_o (std over n - 1, as the official
    code), b = sign(w_hat) * s_o with s_o = 2^round(log2(mean_o |w_hat|)) (detached).
    Backward: EDE."""

    def __init__(self, shape: tuple[int, ...], config: BinarizerConfig) -> None:
        super().__init__(shape, config)
        self._init_ede()

    def scale(self, w_hat: Tensor) -> Tensor:
        mean_abs = per_channel(w_hat.detach()).abs().mean(dim=1).clamp_min(1e-12)
        return torch.pow(2.0, torch.round(torch.log2(mean_abs)))

    def forward(self, w: Tensor) -> Tensor:
        w_hat = standardize_per_channel(w, unbiased=True)
        return self.ede_sign(w_hat) * _channel_view(self.scale(w_hat), w)

    def export(self, w: Tensor) -> WeightExport:
        w_hat = standardize_per_channel(w.detach(), unbiased=True)
        bits = _to_numpy(sign_pm1(w_hat)).astype(np.int8)
        return WeightExport(bits, _to_numpy(self.scale(w_hat)).astype(np.float32))

    def score(self, w: Tensor) -> Tensor:
        return standardize_per_channel(w.detach(), unbiased=True)


class EdeSignActivation(_EdeMixin, ActivationQuantizer):
    """sign(a) with IR-Net's EDE gradient."""

    def __init__(self, channels: int, config: BinarizerConfig) -> None:
        super().__init__(channels, config)
        self._init_ede()

    def forward(self, x: Tensor) -> Tensor:
        return self.ede_sign(x)


# --- siman ---------------------------------------------------------------------------

#: SiMaN's numerical floor under every variance it divides by (official code: 1e-5).
SIMAN_EPS = 1e-5


def percentile_linear(sorted_values: Tensor, percent: float) -> Tensor:
    """The ``percent``-th percentile of an ascending 1-d tensor with numpy's default
    (linear) interpolation: position p/100 * (n - 1) between its neighbours."""
    n = sorted_values.numel()
    pos = percent / 100.0 * (n - 1)
    lo = min(max(int(math.floor(pos)), 0), n - 1)
    hi = min(lo + 1, n - 1)
    frac = torch.tensor(pos - lo, dtype=sorted_values.dtype, device=sorted_values.device)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def siman_clip(w: Tensor, percent: float) -> Tensor:
    """SiMaN's latent-weight update (no gradient): centre each output channel, then clamp
    the magnitudes to the whole layer's [p, 100 - p] percentiles, keeping signs
    (a centred weight of exactly 0 stays 0)."""
    w = w.detach()
    centred = w - _channel_view(per_channel(w).mean(dim=1), w)
    magnitude = centred.abs()
    ordered = torch.sort(magnitude.flatten()).values
    low = percentile_linear(ordered, percent)
    high = percentile_linear(ordered, 100.0 - percent)
    return torch.minimum(torch.maximum(magnitude, low), high) * torch.sign(centred)


class SimanWeight(WeightQuantizer):
    """SiMaN (Lin et al., TPAMI 2022), as its official code does it.

    Clipping: with p = ``clip_percent`` (the buffer stepped by ``set_schedule``,
    clip_percent * (1 - epoch/epochs)) > 0, the latent weights are first centred per
    output channel and their magnitudes clamped to the layer's [p, 100 - p] percentiles
    (``siman_clip``). The official code overwrites the parameter with that in every
    forward; here a training forward does it in place under ``torch.no_grad`` on the
    parameter itself (so the optimizer steps from the clipped weights), and nothing else
    writes: evaluation, ``export`` and ``score`` apply the same clip to a copy, so the
    exported bits are those of the evaluated model. The forward uses the clipped value
    with the identity gradient to the latent weight (nothing saved for backward refers
    to the parameter, so the in-place write cannot invalidate a graph). p = 0 (never
    stepped, or a checkpoint from before clipping existed) switches clipping off.

    Bits: X = |(w_c - mean_o)/sqrt(var_o + 1e-5)| (variance over n - 1) of the clipped
    weights w_c; the floor(n/2) largest X of each output channel get B = 1 (ties: lower
    position first gets 0), the rest B = 0. Effective weight alpha_o * (2B - 1) (code
    ``pm1``) or alpha_o * B (code ``01``), with the identity STE on X. alpha_o is
    learnable, initialized lazily to mean_o |w|. No weight decay on the latent weights
    nor on alpha."""

    no_weight_decay = True
    alpha_initialized: Tensor
    clip_percent: Tensor

    def __init__(self, shape: tuple[int, ...], config: BinarizerConfig) -> None:
        super().__init__(shape, config)
        self.alpha = nn.Parameter(torch.ones(shape[0]))
        self.register_buffer("alpha_initialized", torch.tensor(False))
        self.register_buffer("clip_percent", torch.tensor(0.0))

    def set_schedule(self, epoch: int, epochs: int) -> None:
        self.clip_percent.fill_(siman_percent(epoch, epochs, self.config.params["clip_percent"]))

    def no_weight_decay_parameters(self) -> list[nn.Parameter]:
        return [self.alpha]

    def _load_from_state_dict(  # type: ignore[no-untyped-def]
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
        )
        key = prefix + "clip_percent"
        if key in missing_keys:  # saved before clipping existed: its bits had none
            missing_keys.remove(key)
            self.clip_percent.fill_(0.0)

    def clipped(self, w: Tensor) -> Tensor:
        """The latent weights the bits come from: ``siman_clip`` at the current p (w
        itself when p = 0), with the identity gradient to ``w``."""
        percent = float(self.clip_percent)
        if percent <= 0:
            return w
        with torch.no_grad():
            clipped = siman_clip(w, percent)
        return clipped + (w - w.detach()) if w.requires_grad else clipped

    def code_bits(self, w: Tensor) -> Tensor:
        """B in {0, 1}, shape of w (w already clipped)."""
        x = per_channel(self.magnitude(w.detach()))
        n = x.shape[1]
        ranks = rank_along_rows(x)
        return (ranks >= n - n // 2).to(w.dtype).reshape(w.shape)

    @staticmethod
    def magnitude(w: Tensor) -> Tensor:
        """X = |standardized w| (variance over n - 1, plus 1e-5)."""
        return standardize_per_channel(w, unbiased=True, eps=SIMAN_EPS).abs()

    def forward(self, w: Tensor) -> Tensor:
        if not bool(self.alpha_initialized):
            with torch.no_grad():
                self.alpha.copy_(per_channel(w).abs().mean(dim=1))
                self.alpha_initialized.fill_(True)
        wc = self.clipped(w)
        if self.training and wc is not w and isinstance(w, nn.Parameter):
            with torch.no_grad():
                w.copy_(wc)  # the official in-place update of the latent weights
        b = self.code_bits(wc)
        code = 2 * b - 1 if self.config.params["code"] == "pm1" else b
        x = self.magnitude(wc)
        return (x - x.detach() + code) * _channel_view(self.alpha, w)

    def export(self, w: Tensor) -> WeightExport:
        from bnn_export.errors import BnnExportError

        if self.config.params["code"] != "pm1":
            raise BnnExportError(
                "SiMaN with code '01' has {0,1} weights, which binary conv ops cannot express",
                hint="train with the default code 'pm1' to export",
            )
        bits = _to_numpy(2 * self.code_bits(self.clipped(w.detach())) - 1).astype(np.int8)
        return WeightExport(bits, _to_numpy(self.alpha).astype(np.float32))

    def score(self, w: Tensor) -> Tensor:
        return self.magnitude(self.clipped(w.detach()))


class _SimanActivationSign(torch.autograd.Function):
    """SiMaN's activation in one autograd node. Forward: per sample (all but the batch
    axis, n values), c = a - mean, s = sqrt(var + 1e-5) with var over n - 1, output
    sign(c) (= sign(a1), a1 = c / s). Backward: the official estimator
    g = grad * clamp(2 - 2|a1|, 0) carried back through the standardization in closed form,
    da = (g - mean(g) - a1 * sum(g * a1) / (n - 1)) / s (the centring's and the variance's
    terms; what autograd computes through mean, var and the division, in fewer passes)."""

    @staticmethod
    def forward(ctx: Any, a: Tensor) -> Tensor:
        dims = tuple(range(1, a.dim()))
        n = math.prod(a.shape[1:])
        dof = n - 1 if n > 1 else n
        x = a.float()  # statistics in float32 also under fp16 / bf16 autocast
        centred = x - x.mean(dim=dims, keepdim=True)
        var = centred.square().sum(dim=dims, keepdim=True) / dof
        inv_s = torch.rsqrt(var + SIMAN_EPS)
        ctx.save_for_backward(centred, inv_s)
        ctx.dof, ctx.dtype = dof, a.dtype
        return sign_pm1(centred).to(a.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        centred, inv_s = ctx.saved_tensors
        dims = tuple(range(1, centred.dim()))
        a1 = centred * inv_s
        g = grad.float() * torch.clamp(2 - 2 * a1.abs(), min=0)
        g_mean = g.mean(dim=dims, keepdim=True)
        ga1 = (g * a1).sum(dim=dims, keepdim=True) / ctx.dof
        return ((g - g_mean - a1 * ga1) * inv_s).to(ctx.dtype)


class CenteredSignActivation(ActivationQuantizer):
    """SiMaN's activation: sign(a - mean(a)) per sample (mean over all but the batch axis).
    Backward as the official code: a1 = (a - mean) / sqrt(var + 1e-5) per sample (variance
    over n - 1), gradient clamp(2 - 2|a1|, 0) at a1, back through the standardization
    (mean and variance included; ``_SimanActivationSign``). sign(a1) = sign(a - mean), so
    the forward and the export (a float reduction before the binary op) only need the
    centring."""

    def forward(self, x: Tensor) -> Tensor:
        return _SimanActivationSign.apply(x)  # type: ignore[no-any-return]

    def export(self) -> ActivationExport:
        return ActivationExport("center")


# --- equal_bits ----------------------------------------------------------------------


class EqualBitsWeight(WeightQuantizer):
    """Equal Bits: sort per output channel (or whole layer); the top round(p*n) latent
    weights become +1, the rest -1 (or the middle ranks 0 with pruning). Fixed scale
    alpha = sqrt(2/fan_in); identity STE."""

    def bits(self, w: Tensor) -> Tensor:
        p = self.config.params
        rows = per_channel(w) if p["granularity"] == "channel" else w.reshape(1, -1)
        return ot_bits(rows, p["bit_ratio"], p["prune_rate"]).reshape(w.shape)

    def scale(self) -> float:
        fan_in = int(np.prod(self.shape[1:]))
        return float(np.sqrt(2.0 / fan_in))

    def forward(self, w: Tensor) -> Tensor:
        return (w - w.detach() + self.bits(w)) * self.scale()

    def export(self, w: Tensor) -> WeightExport:
        bits = _to_numpy(self.bits(w.detach())).astype(np.int8)
        return WeightExport(bits, np.full(self.shape[0], self.scale(), dtype=np.float32))


# --- sdbnn ---------------------------------------------------------------------------


class SdBnnWeight(_EdeMixin, WeightQuantizer):
    """SD-BNN WSD: w~ = w + sigmoid(alpha_o) * 0.01 * mean_o(w) (mean detached, alpha_o
    learnable, init 0); bits = sign(w~) with the EDE gradient; no scale."""

    def __init__(self, shape: tuple[int, ...], config: BinarizerConfig) -> None:
        super().__init__(shape, config)
        self._init_ede()
        self.alpha = nn.Parameter(torch.zeros(shape[0]))

    def shifted(self, w: Tensor) -> Tensor:
        mean = per_channel(w.detach()).mean(dim=1)
        return w + _channel_view(torch.sigmoid(self.alpha) * 0.01 * mean, w)

    def forward(self, w: Tensor) -> Tensor:
        return self.ede_sign(self.shifted(w))

    def export(self, w: Tensor) -> WeightExport:
        bits = _to_numpy(sign_pm1(self.shifted(w.detach()))).astype(np.int8)
        return WeightExport(bits, np.ones(self.shape[0], dtype=np.float32))

    def score(self, w: Tensor) -> Tensor:
        return self.shifted(w.detach()).detach()


class SdBnnActivation(_EdeMixin, ActivationQuantizer):
    """SD-BNN ASD: a~ = a + SE(a), SE(a) = sigmoid(W2 relu(W1 GAP(a))) (no biases,
    reduction 16) per sample and channel; or (``activation="static"``) a~ = a +
    sigmoid(beta_c). bits = sign(a~) with the EDE gradient."""

    def __init__(self, channels: int, config: BinarizerConfig) -> None:
        super().__init__(channels, config)
        self._init_ede()
        self.static = config.params["activation"] == "static"
        if self.static:
            self.beta = nn.Parameter(torch.zeros(channels))
        else:
            hidden = max(1, channels // 16)
            self.se_fc1 = nn.Linear(channels, hidden, bias=False)
            self.se_fc2 = nn.Linear(hidden, channels, bias=False)

    def shift(self, x: Tensor) -> Tensor:
        shape = (1, self.channels) + (1,) * (x.dim() - 2)
        if self.static:
            return torch.sigmoid(self.beta).reshape(shape)
        pooled = x.mean(dim=tuple(range(2, x.dim()))) if x.dim() > 2 else x
        se = torch.sigmoid(self.se_fc2(torch.relu(self.se_fc1(pooled))))
        return se.reshape(x.shape[0], *shape[1:])

    def forward(self, x: Tensor) -> Tensor:
        return self.ede_sign(x + self.shift(x))

    def export(self) -> ActivationExport:
        if self.static:
            return ActivationExport("threshold", threshold=_to_numpy(-torch.sigmoid(self.beta)))
        return ActivationExport(
            "se", se_w1=_to_numpy(self.se_fc1.weight), se_w2=_to_numpy(self.se_fc2.weight)
        )


# --- gwt -----------------------------------------------------------------------------


class GwtWeight(WeightQuantizer):
    """Group weight transformation, built from the paper's description (its code and full
    text were not reachable): each output channel is a group; its weights are normalized
    (w_hat = (w - mean_o)/std_o) and mapped through tanh(beta * w_hat), an exactly
    differentiable transform (no STE) whose slope beta is annealed geometrically from
    beta_min to beta_max over training, driving the outputs to +-1. In evaluation mode
    (and at export) the weight is the binary limit sign(w_hat), so reported accuracy is
    that of the exported network; export reports how many transformed values were still
    unsaturated (|tanh(beta_max * w_hat)| < 0.99)."""

    beta: Tensor

    def __init__(self, shape: tuple[int, ...], config: BinarizerConfig) -> None:
        super().__init__(shape, config)
        self.register_buffer("beta", torch.tensor(float(config.params["beta_min"])))

    def set_schedule(self, epoch: int, epochs: int) -> None:
        lo, hi = self.config.params["beta_min"], self.config.params["beta_max"]
        frac = epoch / (epochs - 1) if epochs > 1 else 1.0
        self.beta.fill_(lo * (hi / lo) ** frac)

    def forward(self, w: Tensor) -> Tensor:
        w_hat = standardize_per_channel(w)
        if not self.training:
            return sign_pm1(w_hat)
        return torch.tanh(self.beta * w_hat)

    def export(self, w: Tensor) -> WeightExport:
        w_hat = standardize_per_channel(w.detach())
        soft = torch.tanh(self.config.params["beta_max"] * w_hat)
        unsaturated = float((soft.abs() < 0.99).float().mean())
        bits = _to_numpy(sign_pm1(w_hat)).astype(np.int8)
        return WeightExport(
            bits, np.ones(self.shape[0], dtype=np.float32), {"unsaturated_fraction": unsaturated}
        )

    def score(self, w: Tensor) -> Tensor:
        return standardize_per_channel(w.detach())


class FrozenWeight(WeightQuantizer):
    """Fixed exported bits (e.g. after bit-ratio fixing): forward gives bits * scale."""

    effective: Tensor

    def __init__(
        self, shape: tuple[int, ...], config: BinarizerConfig, export: WeightExport
    ) -> None:
        super().__init__(shape, config)
        self.frozen = export
        self.register_buffer(
            "effective",
            torch.from_numpy(export.bits.astype(np.float32))
            * torch.from_numpy(export.scale.astype(np.float32)).reshape(
                -1, *[1] * (len(shape) - 1)
            ),
        )

    def forward(self, w: Tensor) -> Tensor:
        return self.effective

    def export(self, w: Tensor) -> WeightExport:
        return self.frozen


WEIGHT_QUANTIZERS: dict[str, Callable[[tuple[int, ...], BinarizerConfig], WeightQuantizer]] = {
    "none": FloatWeight,
    "ste": SteSignWeight,
    "irnet": IrNetWeight,
    "siman": SimanWeight,
    "equal_bits": EqualBitsWeight,
    "sdbnn": SdBnnWeight,
    "gwt": GwtWeight,
}
ACTIVATION_QUANTIZERS: dict[str, Callable[[int, BinarizerConfig], ActivationQuantizer]] = {
    "none": HardTanh,
    "ste": SteSignActivation,
    "irnet": EdeSignActivation,
    "siman": CenteredSignActivation,
    "equal_bits": SteSignActivation,
    "sdbnn": SdBnnActivation,
    "gwt": SteSignActivation,
}


def weight_quantizer(config: BinarizerConfig, shape: tuple[int, ...]) -> WeightQuantizer:
    return WEIGHT_QUANTIZERS[config.name](tuple(shape), config)


def activation_quantizer(config: BinarizerConfig, channels: int) -> ActivationQuantizer:
    return ACTIVATION_QUANTIZERS[config.name](channels, config)


def step_schedule(model: nn.Module, epoch: int, epochs: int) -> None:
    """Every quantizer's ``set_schedule(epoch, epochs)``; each is marked as stepped
    (``schedule_stepped``), so that an export can tell a schedule that never ran."""
    for module in model.modules():
        if isinstance(module, WeightQuantizer | ActivationQuantizer):
            module.set_schedule(epoch, epochs)
            module.schedule_stepped = True
