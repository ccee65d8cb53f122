"""The binarizer registry: one source of truth for CLI choices, training, checkpoint
metadata, converters and docs.

A binarizer is named here with its parameters and a description; each framework
backend (``torch_impl``, ``larq_impl``) implements the same names. Converters never
branch on names: they ask a layer's binarizer what it exports (``WeightExport``,
``ActivationExport``).
"""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bnn_export.errors import BnnExportError, unknown_name


@dataclass(frozen=True)
class BinarizerInfo:
    name: str
    summary: str
    reference: str
    defaults: dict[str, Any] = field(default_factory=dict)
    binary: bool = True
    #: Checks merged parameters; raises BnnExportError naming the bad value.
    check: Callable[[dict[str, Any]], None] | None = None


def _one_of(key: str, value: Any, valid: tuple[Any, ...]) -> None:
    if value not in valid:
        raise BnnExportError(f"{key} must be one of {', '.join(map(str, valid))}, got {value!r}")


def _positive(key: str, value: Any) -> None:
    if not isinstance(value, int | float) or not value > 0:
        raise BnnExportError(f"{key} must be a positive number, got {value!r}")


def check_bit_ratio(p: Any) -> float:
    """A ratio of +1 weights must lie strictly between 0 and 1."""
    if not isinstance(p, int | float) or not math.isfinite(p) or not 0.0 < p < 1.0:
        raise BnnExportError(f"bit ratio must be a number in (0, 1), got {p!r}")
    return float(p)


def check_prune_rate(k: Any) -> float:
    if not isinstance(k, int | float) or not math.isfinite(k) or not 0.0 <= k < 1.0:
        raise BnnExportError(f"prune rate must be a number in [0, 1), got {k!r}")
    return float(k)


def count_of_top(p: float, n: int) -> int:
    """round(p * n) with halves rounded up: how many of n weights a ratio p makes +1.
    The same rule in every backend and in bit-ratio fixing."""
    return math.floor(p * n + 0.5)


def ede_schedule(epoch: int, epochs: int, t_min: float, t_max: float) -> tuple[float, float]:
    """IR-Net/SD-BNN's EDE schedule: t = T_min * 10^(e/E * log10(T_max/T_min)),
    k = max(1/t, 1). Pure Python, shared by both backends."""
    t = t_min * 10 ** (epoch / max(epochs, 1) * math.log10(t_max / t_min))
    return float(t), float(max(1.0 / t, 1.0))


def siman_percent(epoch: int, epochs: int, clip_percent: float) -> float:
    """SiMaN's clipping percentile p = clip_percent * (1 - e/E) at epoch e (0-based) of E:
    15 at the first epoch, 15/E at the last in the official code. Pure Python, shared by
    both backends."""
    return float(clip_percent * (1 - epoch / max(epochs, 1)))


def _check_ede(p: dict[str, Any]) -> None:
    _positive("t_min", p["t_min"])
    _positive("t_max", p["t_max"])
    if p["t_min"] > p["t_max"]:
        raise BnnExportError(f"t_min ({p['t_min']}) must not exceed t_max ({p['t_max']})")


def _check_equal_bits(p: dict[str, Any]) -> None:
    check_bit_ratio(p["bit_ratio"])
    check_prune_rate(p["prune_rate"])
    _one_of("granularity", p["granularity"], ("channel", "layer"))
    if p["prune_rate"] > 0 and p["bit_ratio"] != 0.5:
        raise BnnExportError(
            "pruning keeps the +1/-1 counts equal, so it needs bit_ratio 0.5, "
            f"got bit_ratio {p['bit_ratio']} with prune_rate {p['prune_rate']}"
        )


def _check_sdbnn(p: dict[str, Any]) -> None:
    _check_ede(p)
    _one_of("activation", p["activation"], ("se", "static"))


def _check_siman(p: dict[str, Any]) -> None:
    _one_of("code", p["code"], ("pm1", "01"))
    c = p["clip_percent"]
    if not 0.0 <= c < 50.0:
        raise BnnExportError(f"clip_percent must be in [0, 50), got {c!r}")


def _check_gwt(p: dict[str, Any]) -> None:
    _positive("beta_min", p["beta_min"])
    _positive("beta_max", p["beta_max"])


REGISTRY: dict[str, BinarizerInfo] = {
    info.name: info
    for info in [
        BinarizerInfo(
            "none",
            "full-precision baseline: no binarization (float weights and activations)",
            "-",
            binary=False,
        ),
        BinarizerInfo(
            "ste",
            "sign with clipped straight-through estimator (|x| <= 1)",
            "Courbariaux et al. 2016, BinaryNet; larq ste_sign",
        ),
        BinarizerInfo(
            "irnet",
            "IR-Net: per-channel standardized weights (Libra-PB), power-of-two scale, "
            "Error Decay Estimator gradient",
            "Qin et al., CVPR 2020 (htqin/IR-Net; its ResNet-20 recipe uses t_min 1e-3)",
            # t_min 0.1 stays the default; the official CIFAR-10 ResNet-20 recipe sets 1e-3
            defaults={"t_min": 0.1, "t_max": 10.0},
            check=_check_ede,
        ),
        BinarizerInfo(
            "siman",
            "SiMaN: the higher-magnitude half of each filter gets +1 after per-epoch "
            "percentile clipping of the latent weights; learnable per-channel scale; "
            "per-sample centred activations; no weight decay on binary weights or scale",
            "Lin et al., TPAMI 2022 (lmbxmu/SiMaN)",
            # clip_percent: p at epoch e of E is clip_percent * (1 - e/E); 15 as the
            # official code; 0 switches the clipping off
            defaults={"code": "pm1", "clip_percent": 15.0},
            check=_check_siman,
        ),
        BinarizerInfo(
            "equal_bits",
            "Equal Bits: optimal-transport sort per channel/layer, the top round(p*n) weights "
            "become +1; fixed scale sqrt(2/fan_in); optional pruning of the middle ranks",
            "Li, Pintea, van Gemert, AAAI 2022 (liyunqianggyn/Equal-Bits-BNN; its CIFAR-10 "
            "default is the pruning variant, halfmask with prune_rate 0.5)",
            # no pruning by default: pruned (ternary) layers cannot be exported
            defaults={"bit_ratio": 0.5, "granularity": "channel", "prune_rate": 0.0},
            check=_check_equal_bits,
        ),
        BinarizerInfo(
            "sdbnn",
            "SD-BNN: self-distribution shift of weights (learnable per channel) and of "
            "activations (squeeze-excitation branch, or a static per-channel threshold), EDE",
            "Xue et al. 2021, arXiv 2103.02394 (pingxue-hfut/SD-BNN; its ResNet-20 recipe "
            "uses t_min 1e-3)",
            # t_min 0.1 stays the default; the official CIFAR-10 ResNet-20 recipe sets 1e-3
            defaults={"t_min": 0.1, "t_max": 10.0, "activation": "se"},
            check=_check_sdbnn,
        ),
        BinarizerInfo(
            "gwt",
            "group weight transformation: per-channel normalized weights through tanh with an "
            "annealed slope (exactly differentiable, no STE); sign at evaluation/export",
            "Shulman 2021, arXiv 2107.01400 (rebuilt from the paper's description)",
            defaults={"beta_min": 1.0, "beta_max": 100.0},
            check=_check_gwt,
        ),
    ]
}


@dataclass(frozen=True)
class BinarizerConfig:
    """A binarizer by name plus its parameters; serializable into checkpoints."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def info(self) -> BinarizerInfo:
        return REGISTRY[self.name]

    @property
    def binary(self) -> bool:
        return self.info.binary

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(sorted(self.params.items()))}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BinarizerConfig:
        return get(d)


def names() -> list[str]:
    return list(REGISTRY)


def _validate(name: str, params: dict[str, Any]) -> dict[str, Any]:
    info = REGISTRY[name]
    unknown = set(params) - set(info.defaults)
    if unknown:
        valid = ", ".join(sorted(info.defaults)) or "(it takes no parameters)"
        raise BnnExportError(
            f"binarizer {name!r} has no parameter(s) {', '.join(sorted(unknown))}; valid: {valid}"
        )
    merged = {**info.defaults, **params}
    for key, value in merged.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise BnnExportError(f"binarizer parameter {key}={value} must be finite")
        default = info.defaults[key]
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            merged[key] = float(value)
        elif type(value) is not type(default):
            raise BnnExportError(
                f"binarizer parameter {key} must be a {type(default).__name__}, got {value!r}"
            )
    if info.check is not None:
        info.check(merged)
    return merged


def get(identifier: str | dict[str, Any] | BinarizerConfig, **params: Any) -> BinarizerConfig:
    """A ``BinarizerConfig`` from a name, a config, or a dict with ``name`` and the
    parameters, either flat (``{"name": "irnet", "t_min": 1e-3}``) or under ``params``."""
    if isinstance(identifier, BinarizerConfig):
        return get(identifier.name, **{**identifier.params, **params})
    if isinstance(identifier, dict):
        if "name" not in identifier:
            raise BnnExportError(f"cannot interpret binarizer config {identifier!r}: no 'name'")
        flat = {k: v for k, v in identifier.items() if k not in ("name", "params")}
        return get(identifier["name"], **{**identifier.get("params", {}), **flat, **params})
    if not isinstance(identifier, str):
        raise BnnExportError(f"cannot interpret {identifier!r} as a binarizer")
    if identifier not in REGISTRY:
        raise unknown_name("binarizer", identifier, REGISTRY)
    return BinarizerConfig(identifier, _validate(identifier, params))


def registry() -> dict[str, BinarizerInfo]:
    """The registered binarizers by name (a copy): summary, reference, defaults."""
    return dict(REGISTRY)


class _CallableModule(types.ModuleType):
    """``bnn_export.binarizers()`` returns the registry, while ``bnn_export.binarizers``
    stays this package (``bnn_export.binarizers.get``, ...)."""

    def __call__(self) -> dict[str, BinarizerInfo]:
        return registry()


sys.modules[__name__].__class__ = _CallableModule
