"""The binarizer registry: one source of truth for CLI choices, training, checkpoint
metadata, converters and docs.

A binarizer is named here with its parameters and a description; each framework
backend (``torch_impl``, ``larq_impl``) implements the same names. Converters never
branch on names: they ask a layer's binarizer what it exports (``WeightExport``,
``ActivationExport``).
"""

from __future__ import annotations

import math
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
        valid = ", ".join(sorted(info.defaults)) or "none"
        raise BnnExportError(
            f"binarizer {name!r} has no parameter(s) {', '.join(sorted(unknown))}; valid: {valid}"
        )
    merged = {**info.defaults, **params}
    for key, value in merged.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise BnnExportError(f"binarizer parameter {key}={value} must be finite")
    return merged


def get(identifier: str | dict[str, Any] | BinarizerConfig, **params: Any) -> BinarizerConfig:
    """A ``BinarizerConfig`` from a name, a ``{"name", "params"}`` dict or a config."""
    if isinstance(identifier, BinarizerConfig):
        return get(identifier.name, **{**identifier.params, **params})
    if isinstance(identifier, dict):
        if "name" not in identifier:
            raise BnnExportError(f"cannot interpret binarizer config {identifier!r}: no 'name'")
        return get(identifier["name"], **{**identifier.get("params", {}), **params})
    if not isinstance(identifier, str):
        raise BnnExportError(f"cannot interpret {identifier!r} as a binarizer")
    if identifier not in REGISTRY:
        raise unknown_name("binarizer", identifier, REGISTRY)
    return BinarizerConfig(identifier, _validate(identifier, params))
