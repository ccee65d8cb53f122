"""Build a PyTorch model from an arch spec and a binarizer config."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from bnn_export.binarizers import BinarizerConfig
from bnn_export.checkpoint import Checkpoint
from bnn_export.errors import BnnExportError
from bnn_export.models import ARCHS
from bnn_export.models.layers import binary_layers
from bnn_export.models.torch_zoo import (
    BiRealNet18,
    CifarResNet,
    DigitsNet,
    QuickNet,
    ReActNetA,
    VGGSmall,
)

#: the ImageNet-layout models: (class, smallest input side that keeps every stage >= 1 px)
_SCALABLE: dict[str, tuple[type[nn.Module], int]] = {
    "birealnet18": (BiRealNet18, 32),
    "reactnet-a": (ReActNetA, 32),
    "quicknet": (QuickNet, 32),
}


def build_torch_model(
    arch: dict[str, Any], binarizer: BinarizerConfig, *, seed: int | None = None
) -> nn.Module:
    """The architecture with freshly initialized weights (seeded when ``seed`` is given)."""
    if seed is not None:
        torch.manual_seed(seed)
    name = arch["name"]
    kw = arch["kwargs"]
    c, h, w = kw["input_shape"]
    common = dict(
        binarizer=binarizer, num_classes=kw["num_classes"], in_channels=c, pad_value=kw["pad_value"]
    )
    model: nn.Module
    if name == "digits":
        if (h, w) != (8, 8):
            raise BnnExportError(f"model 'digits' takes 8x8 inputs, got {h}x{w}")
        model = DigitsNet(**common)
    elif name == "resnet20":
        model = CifarResNet(**common, widths=(16, 32, 64), blocks=(3, 3, 3))
    elif name == "resnet18":
        model = CifarResNet(**common, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2))
    elif name == "vgg-small":
        if h != w or h % 8:
            raise BnnExportError(
                f"model 'vgg-small' needs square inputs divisible by 8, got {h}x{w}"
            )
        model = VGGSmall(**common, input_size=h)
    elif name in _SCALABLE:
        cls, smallest = _SCALABLE[name]
        if min(h, w) < smallest:
            raise BnnExportError(
                f"model {name!r} downsamples by 32; it needs inputs of at least "
                f"{smallest}x{smallest}, got {h}x{w}",
                hint="pass --input-size 32 or more (224 is the ImageNet size)",
            )
        model = cls(**common, width=kw.get("width", 1.0))
    else:
        raise BnnExportError(f"no PyTorch builder for model {name!r}; valid: {', '.join(ARCHS)}")
    model.arch = arch  # type: ignore[assignment]
    model.binarizer_config = binarizer  # type: ignore[assignment]
    return model


def torch_state(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def torch_model_from_checkpoint(ckpt: Checkpoint) -> nn.Module:
    """Rebuild a PyTorch model from a checkpoint and load its weights (eval mode)."""
    if ckpt.framework != "torch":
        raise BnnExportError(
            f"this checkpoint was trained with {ckpt.framework!r}, not PyTorch",
            hint="use the larq loader for larq checkpoints",
        )
    model = build_torch_model(ckpt.arch, ckpt.binarizer)
    state = {k: torch.from_numpy(np.array(v)) for k, v in ckpt.tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BnnExportError(
            f"checkpoint tensors do not match model {ckpt.arch['name']!r}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}",
            hint="the checkpoint is corrupt or from another architecture; retrain it",
        )
    model.eval()
    return model


def layer_bit_ratios(model: nn.Module) -> dict[str, dict[str, float]]:
    """Fraction of +1 weights per binary layer (mean/min/max over output channels)."""
    out: dict[str, dict[str, float]] = {}
    for name, layer in binary_layers(model):
        if not layer.is_binary:
            continue
        r = layer.export_weights().ratio_per_channel()
        out[name] = {"mean": float(r.mean()), "min": float(r.min()), "max": float(r.max())}
    return out
