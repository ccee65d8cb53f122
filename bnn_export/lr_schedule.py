"""The learning-rate schedule both trainers follow, as plain Python (no torch, no TF),
and the check of a ``TrainSettings``' optimizer and schedule fields.

The rate at optimizer step ``s`` (0-based) is ``settings.lr * lr_factor(s, ...)``.
With ``lr_interval="step"`` the schedule advances every optimizer step; with
``"epoch"`` it advances once per epoch (step ``s`` is in epoch ``s // steps_per_epoch``),
as the official IR-Net, SiMaN, Equal Bits and SD-BNN trainers do. Counting ``i`` in
those units, with ``T`` units in the run and ``W`` units of warm-up
(``warmup_epochs`` epochs):

- warm-up (``W > 0``): unit ``i < W`` gets ``(i + 1) / W``: the last warm-up unit is at
  the full rate (SiMaN's ``lr * (epoch + 1) / 5`` for W = 5 epochs);
- ``cosine``: after warm-up, ``(1 + cos(pi * (i - p) / (T - p))) / 2`` with
  ``p = W - 1`` (``p = 0`` without warm-up), so the decay starts from the full rate at
  the last warm-up unit and reaches 0 after the last unit. Without warm-up and per step
  this is ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=T)`` and Keras'
  ``CosineDecay(decay_steps=T)``; with 5 warm-up epochs per epoch it is SiMaN's
  ``CosineAnnealingLR(T_max=epochs - 4)`` stepped from epoch 4 on;
- ``step``: ``gamma ** k`` with ``k`` the number of ``milestones`` (epochs) at or before
  the current epoch (Equal Bits' ``lr *= 0.1`` at the start of epochs 150, 250, 320);
- ``constant``: 1.
"""

from __future__ import annotations

import math
from typing import Any

from bnn_export.errors import BnnExportError, unknown_name
from bnn_export.train_settings import TrainSettings

OPTIMIZERS = ("adam", "sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
LR_INTERVALS = ("step", "epoch")


def check_optimization(settings: TrainSettings) -> None:
    """Raise ``BnnExportError`` naming the first optimizer/schedule field that is invalid."""
    if settings.optimizer not in OPTIMIZERS:
        raise unknown_name("optimizer", settings.optimizer, OPTIMIZERS)
    if settings.schedule not in SCHEDULES:
        raise unknown_name("schedule", settings.schedule, SCHEDULES)
    if settings.lr_interval not in LR_INTERVALS:
        raise unknown_name("lr_interval", settings.lr_interval, LR_INTERVALS)
    _finite_in("momentum", settings.momentum, 0.0, 1.0, hi_open=True)
    if settings.nesterov and (settings.optimizer != "sgd" or settings.momentum <= 0):
        raise BnnExportError(
            "nesterov momentum needs the sgd optimizer with a momentum above 0",
            hint="drop --nesterov, or use --optimizer sgd with --momentum > 0",
        )
    _finite_in("weight_decay", settings.weight_decay, 0.0, math.inf)
    _finite_in("gamma", settings.gamma, 0.0, math.inf, lo_open=True)
    if not isinstance(settings.warmup_epochs, int) or settings.warmup_epochs < 0:
        raise BnnExportError(
            f"warmup_epochs must be a whole number >= 0, got {settings.warmup_epochs!r}"
        )
    milestones = list(settings.milestones)
    if milestones and settings.schedule != "step":
        raise BnnExportError(
            f"milestones only apply to the step schedule, got schedule {settings.schedule!r}",
            hint="add --schedule step, or drop --milestones",
        )
    if settings.schedule == "step" and not milestones:
        raise BnnExportError(
            "the step schedule needs milestones (the epochs at which the rate drops)",
            hint="add e.g. --milestones 150,250,320",
        )
    if any(not isinstance(m, int) or m < 1 for m in milestones) or milestones != sorted(
        set(milestones)
    ):
        raise BnnExportError(
            f"milestones must be increasing whole epochs >= 1, got {milestones}",
            hint="e.g. --milestones 150,250,320",
        )
    if not isinstance(settings.devices, int) or settings.devices < 1:
        raise BnnExportError(f"devices must be a whole number >= 1, got {settings.devices!r}")


def _finite_in(
    name: str,
    value: Any,
    lo: float,
    hi: float,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    ok = isinstance(value, int | float) and math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo)
    ok = ok and (value < hi if hi_open else value <= hi)
    if not ok:
        left, right = "(" if lo_open else "[", ")" if hi_open or hi == math.inf else "]"
        raise BnnExportError(
            f"{name} must be a number in {left}{lo:g}, {hi:g}{right}, got {value!r}"
        )


def is_default_schedule(settings: TrainSettings) -> bool:
    """Cosine per optimizer step without warm-up: the trainers' original schedule, which
    they build with the framework's own cosine class so results stay bit for bit."""
    return (
        settings.schedule == "cosine"
        and settings.lr_interval == "step"
        and settings.warmup_epochs == 0
    )


def lr_factor(step: int, settings: TrainSettings, steps_per_epoch: int) -> float:
    """The learning rate at optimizer step ``step`` (0-based) divided by ``settings.lr``."""
    per_epoch = steps_per_epoch if settings.lr_interval == "step" else 1
    i = step if settings.lr_interval == "step" else step // steps_per_epoch
    total = settings.epochs * per_epoch
    warmup = settings.warmup_epochs * per_epoch
    if i < warmup:
        return (i + 1) / warmup
    if settings.schedule == "cosine":
        peak = warmup - 1 if warmup > 0 else 0
        progress = min(1.0, (i - peak) / max(total - peak, 1))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if settings.schedule == "step":
        epoch = step // steps_per_epoch
        return float(settings.gamma ** sum(1 for m in settings.milestones if epoch >= m))
    return 1.0


def lr_factors(settings: TrainSettings, steps_per_epoch: int) -> list[float]:
    """``lr_factor`` for every optimizer step of the run (``epochs * steps_per_epoch``)."""
    return [
        lr_factor(s, settings, steps_per_epoch) for s in range(settings.epochs * steps_per_epoch)
    ]
