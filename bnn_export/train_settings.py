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
    # --- optimizer and learning-rate schedule (bnn_export/optim_torch.py, train_larq.py;
    # docs/recipes.md). The defaults are the trainers' original behaviour: Adam, cosine
    # decay to 0 over all optimizer steps, no warm-up.
    #: adam | sgd | adamw (weight decay: coupled L2 for adam/sgd, decoupled for adamw)
    optimizer: str = "adam"
    #: SGD momentum (sgd only)
    momentum: float = 0.9
    #: Nesterov momentum (sgd only)
    nesterov: bool = False
    #: cosine (to 0 at the end) | step (times ``gamma`` at each of ``milestones``) | constant
    schedule: str = "cosine"
    #: linear warm-up: the first ``warmup_epochs`` epochs ramp the rate up to ``lr``
    warmup_epochs: int = 0
    #: step schedule: the epochs at whose start the rate is multiplied by ``gamma``
    milestones: tuple[int, ...] = ()
    #: step schedule: the factor applied at each milestone
    gamma: float = 0.1
    #: how often the rate changes: every optimizer ``step``, or once per ``epoch`` (as the
    #: official IR-Net / SiMaN / Equal Bits / SD-BNN code does)
    lr_interval: str = "step"
    #: Larq only: replicas of a tf.distribute.MirroredStrategy (1: no strategy)
    devices: int = 1
    #: the recipe (bnn_export/recipes.py) these settings started from, if any
    recipe: str | None = None
    # --- devices, precision, data parallelism, data loading (PyTorch only;
    # bnn_export/train_torch.py, bnn_export/distributed.py; docs/training.md)
    #: auto (CUDA when available, else CPU) | cpu | cuda | cuda:N | mps
    device: str = "auto"
    #: fp32 | bf16 | fp16 (autocast for the forward pass; fp16 with loss scaling, CUDA only)
    precision: str = "fp32"
    #: batch norm over the global batch when data-parallel; None: on with >1 process
    sync_bn: bool | None = None
    #: DataLoader worker processes per training process; None: 0 for in-memory data
    #: without augmentation, else up to 4
    workers: int | None = None
    #: the dataset's standard training augmentation (bnn_export/data_torch.py)
    augment: bool = True
    #: also write TensorBoard event files under DIR/tensorboard
    tensorboard: bool = False
