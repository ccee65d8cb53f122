"""PyTorch trainer: Adam + cosine schedule, binarizer schedule hooks, per-epoch progress."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from bnn_export.binarizers import torch_impl as bz
from bnn_export.datasets import Dataset
from bnn_export.models.evaluation import accuracy, predict, recalibrate_batchnorm
from bnn_export.models.layers import BinaryConv2d, BinaryLinear, binary_layers
from bnn_export.train_log import epoch_record, epoch_steps
from bnn_export.train_settings import TrainSettings

__all__ = [
    "TrainSettings",
    "accuracy",
    "auto_threads",
    "predict",
    "recalibrate_batchnorm",
    "set_schedule",
    "thread_count",
    "train",
]


#: Below this many multiply-accumulates per sample, extra threads cost more than they give.
SMALL_MODEL_MACS = 10_000_000


@torch.no_grad()
def macs_per_sample(model: nn.Module, sample: torch.Tensor) -> int:
    """Multiply-accumulates of the convs and linear layers for one input (forward hooks on
    a copy: a first forward may initialize binarizer state, which training must do itself)."""
    model = copy.deepcopy(model)
    total = 0
    layers = (nn.Conv2d, nn.Linear, BinaryConv2d, BinaryLinear)

    def hook(m: nn.Module, _: Any, out: torch.Tensor) -> None:
        nonlocal total  # one sample: each output element is a dot product over weight[o]
        weight = cast(torch.Tensor, m.weight)
        total += out.numel() * weight[0].numel()

    for m in model.modules():
        if isinstance(m, layers):
            m.register_forward_hook(hook)
    model.eval()
    model(sample[:1])
    return total


def auto_threads(model: nn.Module, sample: torch.Tensor) -> int:
    """1 for small models (e.g. digits: ~2M MACs): their ops are too short to split, and
    OpenMP's spinning workers make training 10x slower when another job shares the cores."""
    if macs_per_sample(model, sample) < SMALL_MODEL_MACS:
        return 1
    return torch.get_num_threads()


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Latent weights whose binarizer forbids weight decay go in a group with none."""
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


def set_schedule(model: nn.Module, epoch: int, epochs: int) -> None:
    """Step every binarizer schedule of ``model`` to ``epoch`` of ``epochs``."""
    bz.step_schedule(model, epoch, epochs)


def thread_count(model: nn.Module, data: Dataset, settings: TrainSettings) -> int:
    """The intra-op threads training uses: ``settings.num_threads`` or ``auto_threads``."""
    return settings.num_threads or auto_threads(model, torch.from_numpy(data.x_train[:1]))


def train(model: nn.Module, data: Dataset, settings: TrainSettings) -> list[dict[str, float]]:
    """Train in place; returns the per-epoch history."""
    with torch_threads(thread_count(model, data, settings)):
        return _train(model, data, settings)


def _train(model: nn.Module, data: Dataset, settings: TrainSettings) -> list[dict[str, float]]:
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    optimizer = torch.optim.Adam(_param_groups(model, settings.weight_decay), lr=settings.lr)
    steps_per_epoch = max(1, int(np.ceil(len(data.x_train) / settings.batch_size)))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=settings.epochs * steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()
    x_all = torch.from_numpy(data.x_train)
    y_all = torch.from_numpy(data.y_train)
    history: list[dict[str, float]] = []
    for epoch in range(settings.epochs):
        set_schedule(model, epoch, settings.epochs)
        model.train()
        order = torch.from_numpy(rng.permutation(len(x_all)))
        t0 = time.perf_counter()
        total_loss, correct = 0.0, 0
        bar = epoch_steps(epoch, settings.epochs, steps_per_epoch, progress=settings.progress)
        for step in bar:
            idx = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            xb, yb = x_all[idx], y_all[idx]
            logits = model(xb)
            loss = loss_fn(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_value = loss.item()
            total_loss += loss_value * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
        test_acc = accuracy(model, data.x_test, data.y_test)
        record = epoch_record(
            epoch,
            settings.epochs,
            total_loss=total_loss,
            correct=correct,
            samples=len(x_all),
            test_accuracy=test_acc,
            seconds=time.perf_counter() - t0,
            progress=settings.progress,
        )
        history.append(record)
    return history
