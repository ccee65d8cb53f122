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
    #: takes a width multiplier (``--width``); the PyTorch zoo only when not larq
    scalable: bool = False
    larq: bool = True  # a Larq (Keras) builder exists


ARCHS: dict[str, ArchInfo] = {
    a.name: a
    for a in [
        ArchInfo("digits", "small binary CNN for 8x8 digits (2 bconv + 1 bdense)", (1, 8, 8)),
        ArchInfo("resnet20", "CIFAR ResNet-20, Bi-Real shortcuts, widths 16/32/64", (3, 32, 32)),
        ArchInfo("resnet18", "CIFAR ResNet-18, Bi-Real shortcuts, widths 64..512", (3, 32, 32)),
        ArchInfo("vgg-small", "VGG-Small (128-128-256-256-512-512), CIFAR", (3, 32, 32)),
        ArchInfo(
            "birealnet18",
            "Bi-Real Net-18, ImageNet stem (Liu et al., ECCV 2018)",
            (3, 224, 224),
            scalable=True,
            larq=False,
        ),
        ArchInfo(
            "reactnet-a",
            "ReActNet-A: MobileNetV1 layout, RSign/RPReLU (ECCV 2020)",
            (3, 224, 224),
            scalable=True,
            larq=False,
        ),
        ArchInfo(
            "quicknet",
            "QuickNet (small variant), Larq's fast ImageNet BNN",
            (3, 224, 224),
            scalable=True,
            larq=False,
        ),
    ]
}


def arch_spec(
    name: str,
    *,
    num_classes: int = 10,
    input_shape: tuple[int, int, int] | None = None,
    pad_value: float = 1.0,
    width: float | None = None,
) -> dict[str, Any]:
    """The serializable description of an architecture (``width``: a channel multiplier,
    for the architectures that take one)."""
    if name not in ARCHS:
        raise unknown_name("model", name, ARCHS)
    if pad_value not in (0.0, 1.0):
        raise BnnExportError(f"pad_value must be 0 or 1, got {pad_value}")
    info = ARCHS[name]
    if width is not None and not info.scalable:
        scalable = ", ".join(a for a, i in ARCHS.items() if i.scalable)
        raise BnnExportError(
            f"model {name!r} takes no width multiplier (those that do: {scalable})"
        )
    if width is not None and not (isinstance(width, int | float) and 0 < width <= 4):
        raise BnnExportError(f"width must be a number in (0, 4], got {width!r}")
    shape = tuple(input_shape or info.input_shape)
    kwargs: dict[str, Any] = {
        "num_classes": int(num_classes),
        "input_shape": [int(s) for s in shape],
        "pad_value": float(pad_value),
    }
    if info.scalable:
        kwargs["width"] = float(width if width is not None else 1.0)
    return {"name": name, "kwargs": kwargs}
