"""Inference on PyTorch models outside training: logits, accuracy, batch-norm re-estimation.

Converters, runtimes and benchmarks need these as much as trainers do; they live beside
the models so that nothing outside training imports a trainer.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits for NCHW float32 inputs, in eval mode."""
    model.eval()
    out = [
        model(torch.from_numpy(x[i : i + batch_size])).numpy() for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0,), dtype=np.float32)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy (eval mode) on NCHW inputs and integer labels."""
    return float((predict(model, x).argmax(axis=1) == y).mean())


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> None:
    """Re-estimate batch-norm running statistics on ``x`` (e.g. after bit-ratio fixing
    changed the binary layers' outputs); weights are untouched. Leaves eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches
    model.eval()
    for bn in bns:
        bn.train()
    for i in range(0, len(x), batch_size):
        model(torch.from_numpy(x[i : i + batch_size]))
    for bn, momentum in zip(bns, saved, strict=True):
        bn.momentum = momentum
    model.eval()
