"""Model zoo registry: architecture names, default input shapes, builders.

``arch`` dicts (``{"name": ..., "kwargs": {...}}``) are what checkpoints record; both
framework backends build the same architecture from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bnn_export.errors import BnnExportError, unknown_name


@dataclass(frozen=True)
class ArchInfo:
    name: str
    summary: str
    input_shape: tuple[int, int, int]  # default (C, H, W)


ARCHS: dict[str, ArchInfo] = {
    a.name: a
    for a in [
        ArchInfo("digits", "small binary CNN for 8x8 digits (2 bconv + 1 bdense)", (1, 8, 8)),
        ArchInfo("resnet20", "CIFAR ResNet-20, Bi-Real shortcuts, widths 16/32/64", (3, 32, 32)),
        ArchInfo("resnet18", "CIFAR ResNet-18, Bi-Real shortcuts, widths 64..512", (3, 32, 32)),
        ArchInfo("vgg-small", "VGG-Small (128-128-256-256-512-512), CIFAR", (3, 32, 32)),
    ]
}


def arch_spec(
    name: str,
    *,
    num_classes: int = 10,
    input_shape: tuple[int, int, int] | None = None,
    pad_value: float = 1.0,
) -> dict[str, Any]:
    """The serializable description of an architecture."""
    if name not in ARCHS:
        raise unknown_name("model", name, ARCHS)
    if pad_value not in (0.0, 1.0):
        raise BnnExportError(f"pad_value must be 0 or 1, got {pad_value}")
    shape = tuple(input_shape or ARCHS[name].input_shape)
    return {
        "name": name,
        "kwargs": {
            "num_classes": int(num_classes),
            "input_shape": [int(s) for s in shape],
            "pad_value": float(pad_value),
        },
    }
