"""The PyTorch optimizer and learning-rate scheduler a ``TrainSettings`` asks for.

``make_optimizer`` builds Adam, SGD (momentum, optionally Nesterov) or AdamW over two
parameter groups: every parameter with ``settings.weight_decay``, except the latent
weights whose binarizer says ``no_weight_decay`` and the parameters its
``no_weight_decay_parameters()`` lists (SiMaN's rule), which get 0. Adam and SGD apply
the decay as PyTorch does, coupled (``grad += wd * w``, what the official BNN code
uses); AdamW decouples it (``w -= lr * wd * w``).

``make_scheduler`` returns a scheduler stepped once per optimizer step that follows
``bnn_export.lr_schedule.lr_factor``; the default settings (cosine per step, no
warm-up) get ``CosineAnnealingLR(T_max=all steps)`` itself, the trainer's original
schedule, so default runs stay bit for bit what they were.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bnn_export.lr_schedule import check_optimization, is_default_schedule, lr_factors
from bnn_export.models.layers import binary_layers
from bnn_export.train_settings import TrainSettings

__all__ = ["make_optimizer", "make_scheduler", "param_groups"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: ``weight_decay`` for all parameters but those the binarizers exempt
    (latent weights with ``no_weight_decay``, ``no_weight_decay_parameters()``), 0 for
    those."""
    no_wd: set[int] = set()
    for _, layer in binary_layers(model):
        if layer.weight_quantizer.no_weight_decay:
            no_wd.add(id(layer.weight))
        no_wd.update(id(p) for p in layer.weight_quantizer.no_weight_decay_parameters())
    params = list(model.parameters())
    return [
        {"params": [p for p in params if id(p) not in no_wd], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) in no_wd], "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """The optimizer of ``settings`` (adam | sgd | adamw) over ``model``'s parameters,
    at ``settings.lr``, with the weight-decay groups of ``param_groups``."""
    check_optimization(settings)
    groups = param_groups(model, settings.weight_decay)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=settings.lr, momentum=settings.momentum, nesterov=settings.nesterov
        )
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=settings.lr)
    return torch.optim.Adam(groups, lr=settings.lr)


def make_scheduler(
    optimizer: torch.optim.Optimizer, settings: TrainSettings, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A scheduler to step once after every optimizer step: the rate at step ``s`` is
    ``settings.lr * lr_factor(s)`` (cosine | step | constant, linear warm-up, changing
    per step or per epoch; see ``bnn_export.lr_schedule``)."""
    check_optimization(settings)
    total = settings.epochs * steps_per_epoch
    if is_default_schedule(settings):
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    factors = lr_factors(settings, steps_per_epoch)
    last = factors[-1] if factors else 1.0

    def factor(step: int) -> float:
        return factors[step] if step < total else last

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
