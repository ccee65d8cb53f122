"""Trainer settings shared by the PyTorch and Larq trainers (imports neither framework)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainSettings:
    """What a training run is asked for; both trainers read the same fields."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-2
    weight_decay: float = 0.0
    seed: int = 0
    progress: bool = True
    #: intra-op threads (PyTorch); None: one for small models, else torch's default
    num_threads: int | None = None
