"""Parity of an exported artifact with its source model, as a printed checklist."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

MIN_AGREEMENT = 0.995
MAX_ACCURACY_DROP = 0.005


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Validation:
    checks: list[Check] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, bool(ok), detail))

    def checklist(self) -> str:
        return "\n".join(f"  -[{'✓' if c.ok else 'x'}] {c.name}: {c.detail}" for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.__dict__ for c in self.checks], **self.numbers}


def count_check(v: Validation, what: str, expected: int, found: int) -> None:
    v.add(f"binary layers became {what}", expected == found, f"{found} of {expected}")


def parity_checks(
    v: Validation, logits: np.ndarray, reference: np.ndarray, labels: np.ndarray
) -> None:
    agreement = float((logits.argmax(1) == reference.argmax(1)).mean())
    acc, ref_acc = (
        float((logits.argmax(1) == labels).mean()),
        float((reference.argmax(1) == labels).mean()),
    )
    max_diff = float(np.abs(logits - reference).max())
    v.numbers.update(
        {
            "agreement": agreement,
            "accuracy": acc,
            "reference_accuracy": ref_acc,
            "max_abs_logit_diff": max_diff,
            "samples": int(len(labels)),
        }
    )
    v.add("output shape", logits.shape == reference.shape, f"{logits.shape} vs {reference.shape}")
    v.add(
        "top-1 agreement with the source model",
        agreement >= MIN_AGREEMENT,
        f"{agreement:.2%} (>= {MIN_AGREEMENT:.1%}) on {len(labels)} test images",
    )
    v.add(
        "test accuracy",
        ref_acc - acc <= MAX_ACCURACY_DROP,
        f"artifact {acc:.2%} vs source {ref_acc:.2%} (drop <= {MAX_ACCURACY_DROP:.1%})",
    )
    v.add("max abs logit difference", bool(np.isfinite(max_diff)), f"{max_diff:.3g}")
