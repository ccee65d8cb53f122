"""PyTorch trainer: optimizer and LR schedule from ``optim_torch``, binarizer schedule
hooks, devices and mixed precision, data parallelism (DDP), resumable state, per-epoch
progress."""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from bnn_export import distributed as dd
from bnn_export.binarizers import torch_impl as bz
from bnn_export.data_torch import ArrayDataset, TrainingData
from bnn_export.datasets import Dataset
from bnn_export.errors import BnnExportError
from bnn_export.models.evaluation import accuracy, predict, recalibrate_batchnorm
from bnn_export.models.layers import BinaryConv2d, BinaryLinear
from bnn_export.optim_torch import make_optimizer, make_scheduler
from bnn_export.optim_torch import param_groups as _param_groups
from bnn_export.resume import rng_state, set_rng_state
from bnn_export.train_log import epoch_record
from bnn_export.train_settings import TrainSettings

__all__ = [
    "PRECISIONS",
    "TrainSettings",
    "accuracy",
    "auto_threads",
    "evaluate",
    "predict",
    "recalibrate_batchnorm",
    "resolve_device",
    "set_schedule",
    "thread_count",
    "train",
]

_ = _param_groups  # re-exported for callers of the old private name

#: Below this many multiply-accumulates per sample, extra threads cost more than they give.
SMALL_MODEL_MACS = 10_000_000

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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


def set_schedule(model: nn.Module, epoch: int, epochs: int) -> None:
    """Step every binarizer schedule of ``model`` to ``epoch`` of ``epochs``."""
    bz.step_schedule(model, epoch, epochs)


def as_training_data(data: Dataset | TrainingData, seed: int = 0) -> TrainingData:
    """``data`` itself, or in-memory arrays (``bnn_export.datasets.Dataset``) as torch
    datasets without augmentation."""
    if not isinstance(data, Dataset):
        return data
    shape = data.input_shape
    return TrainingData(
        spec=data.spec,
        train=ArrayDataset(data.x_train, data.y_train, input_shape=shape, seed=seed),
        test=ArrayDataset(data.x_test, data.y_test, input_shape=shape),
        num_classes=data.num_classes,
        input_shape=shape,
        preprocessing=dict(getattr(data, "preprocessing", {}) or {}),
    )


def _first_sample(data: Dataset | TrainingData) -> torch.Tensor:
    if isinstance(data, Dataset):
        return torch.from_numpy(data.x_train[:1])
    return cast(torch.Tensor, data.train[0][0])[None]


def thread_count(model: nn.Module, data: Dataset | TrainingData, settings: TrainSettings) -> int:
    """The intra-op threads training uses: ``settings.num_threads`` or ``auto_threads``."""
    return settings.num_threads or auto_threads(model, _first_sample(data))


# --- devices and precision --------------------------------------------------------------


def resolve_device(spec: str, info: dd.DistInfo | None = None) -> torch.device:
    """``auto`` (CUDA when available, else CPU) | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps``
    -> a device this process can use. With several processes, ``cuda`` means
    ``cuda:LOCAL_RANK``."""
    info = info or dd.DistInfo()
    name = spec.strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise BnnExportError(
                "--device mps: no Apple MPS device is available",
                hint="use --device cpu (or auto)",
            )
        if info.distributed:
            raise BnnExportError(
                "--device mps runs one process; data-parallel training needs cpu or cuda",
                hint="drop --nproc / torchrun, or use --device cpu",
            )
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            built = torch.version.cuda
            why = (
                f"torch {torch.__version__} is a CPU-only build"
                if built is None
                else (f"torch {torch.__version__} (CUDA {built}) finds no CUDA device")
            )
            raise BnnExportError(
                f"--device {spec}: no CUDA device is available ({why})",
                hint="use --device cpu (or auto, which picks CUDA only when present)",
            )
        count = torch.cuda.device_count()
        if name == "cuda":
            index = info.local_rank if info.distributed else torch.cuda.current_device()
        else:
            if info.distributed:
                raise BnnExportError(
                    f"--device {spec} names one GPU, but each of the {info.world_size} "
                    "processes uses its own (cuda:LOCAL_RANK)",
                    hint="pass --device cuda (or auto) with torchrun / --nproc",
                )
            try:
                index = int(name.partition(":")[2])
            except ValueError:
                raise BnnExportError(
                    f"--device {spec}: not a device index", hint="e.g. --device cuda:0"
                ) from None
        if not 0 <= index < count:
            raise BnnExportError(
                f"--device {spec}: no CUDA device {index} (this machine has {count})",
                hint=f"use cuda:0 .. cuda:{count - 1}"
                if not info.distributed
                else "start at most as many processes per node as there are GPUs",
            )
        return torch.device("cuda", index)
    raise BnnExportError(f"unknown device {spec!r}", hint="valid: auto, cpu, cuda, cuda:N, mps")


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision the device cannot train in (autocast would silently fall back)."""
    if precision not in PRECISIONS:
        raise BnnExportError(
            f"unknown precision {precision!r}", hint=f"valid: {', '.join(PRECISIONS)}"
        )
    if precision == "fp32":
        return
    if device.type == "cpu" and precision == "fp16":
        raise BnnExportError(
            "--precision fp16 is not supported on the CPU (float16 autocast on CPU is slow "
            "and needs loss scaling there too)",
            hint="use --precision bf16 on the CPU, or fp16 on a CUDA device",
        )
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise BnnExportError(
            f"--precision bf16: {torch.cuda.get_device_name(device)} does not support bfloat16",
            hint="use --precision fp16 (or fp32)",
        )
    if not torch.amp.is_autocast_available(device.type):
        raise BnnExportError(
            f"--precision {precision}: this PyTorch has no autocast for {device.type}",
            hint="use --precision fp32",
        )


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision for the forward pass (a no-op for fp32). Parameters, optimizer
    state and checkpoints stay float32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: torch.utils.data.Dataset[Any],
    device: torch.device,
    batch: int = 256,
    *,
    workers: int = 0,
) -> float:
    """Top-1 accuracy of ``model`` (eval mode, float32) on ``dataset``, computed on
    ``device`` (``workers``: DataLoader processes decoding the images)."""
    model.eval()
    correct = total = 0
    for xb, yb in _batches(dataset, _sequential(dataset, batch), workers=workers):
        logits = model(xb.to(device))
        correct += int((logits.argmax(1).cpu() == yb).sum())
        total += len(yb)
    return correct / total if total else 0.0


# --- batches ----------------------------------------------------------------------------


def _sequential(dataset: torch.utils.data.Dataset[Any], batch: int) -> list[list[int]]:
    n = len(cast(Any, dataset))
    return [list(range(i, min(i + batch, n))) for i in range(0, n, batch)]


def _fast_arrays(dataset: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Whole-array tensors for an in-memory dataset without augmentation (so batches are
    slices, not per-sample ``__getitem__`` calls); None for any other dataset."""
    from bnn_export.datasets import adapt

    if not isinstance(dataset, ArrayDataset) or dataset.augment is not None:
        return None
    cached = getattr(dataset, "_bnn_export_tensors", None)
    if cached is None:
        x = dataset.x
        if tuple(x.shape[1:]) != tuple(dataset.input_shape):
            x = adapt(x, dataset.input_shape)
        cached = (torch.from_numpy(x.astype("float32", copy=False)), torch.as_tensor(dataset.y))
        dataset._bnn_export_tensors = cached  # type: ignore[attr-defined]
    return cast(tuple[torch.Tensor, torch.Tensor], cached)


def _batches(
    dataset: torch.utils.data.Dataset[Any],
    batch_sampler: Any,
    *,
    workers: int,
    pin_memory: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    arrays = _fast_arrays(dataset)
    if arrays is not None:
        x, y = arrays
        for idx in batch_sampler:
            index = torch.as_tensor(idx, dtype=torch.long)
            yield x[index], y[index].long()
        return
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
    for xb, yb in loader:
        yield xb, torch.as_tensor(yb).long()


def default_workers(dataset: Any, world_size: int) -> int:
    """DataLoader workers when ``--workers`` is not given: none for in-memory arrays
    without augmentation, else up to 4 per process."""
    import os

    if _fast_arrays(dataset) is not None:
        return 0
    return max(0, min(4, (os.cpu_count() or 1) // world_size - 1))


# --- training ---------------------------------------------------------------------------

#: ``on_epoch_end(record, state)``: called on rank 0 after every epoch with its history
#: record plus ``images_per_second`` (training images over the epoch's seconds), and a
#: function building the resumable state (see ``bnn_export.resume``).
EpochHook = Callable[[dict[str, float], Callable[[], dict[str, Any]]], None]


def _buffer_sync(sync_bn: bool) -> dict[str, Any]:
    """DDP's per-forward broadcast of rank 0's buffers: needed with per-process batch norm
    (rank 0's running statistics are the model's), redundant with the synchronized one
    (every rank computes the same global statistics; the binarizers' buffers follow the
    weights, which DDP keeps equal): skipped there, one blocking collective less per step.
    torch >= 2.12 names the option ``forward_sync_buffers``."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    params = inspect.signature(DistributedDataParallel).parameters
    key = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    return {key: not sync_bn}


def train(
    model: nn.Module,
    data: Dataset | TrainingData,
    settings: TrainSettings,
    *,
    resume: dict[str, Any] | None = None,
    on_epoch_end: EpochHook | None = None,
    dist_info: dd.DistInfo | None = None,
) -> list[dict[str, float]]:
    """Train in place on ``settings.device``; returns the per-epoch history (all epochs,
    resumed ones included). The model ends on the CPU in float32.

    ``resume``: a state ``bnn_export.resume.load_state`` read; training continues after
    its last epoch up to ``settings.epochs``. ``dist_info``: this process's place in a
    data-parallel run (default: from the environment); the process group must exist
    (``bnn_export.distributed.process_group``)."""
    info = dist_info or dd.from_env()
    tdata = as_training_data(data, settings.seed)
    with torch_threads(thread_count(model, tdata, settings)), warnings.catch_warnings():
        # DDP on a [out, 1, k, k] conv weight: strides differ only along a size-1 dim
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
        try:
            return _train(model, tdata, settings, resume, on_epoch_end, info)
        except RuntimeError as exc:
            if info.distributed and _peer_lost(exc):
                err = BnnExportError(
                    "lost contact with another training process (it stopped or crashed): "
                    + str(exc).splitlines()[0],
                    hint="see that process's error; an interrupted run directory is "
                    "resumable with `bnn-export train --resume DIR`",
                )
                err.consequential = True  # type: ignore[attr-defined]
                raise err from None
            raise
        finally:
            model.to("cpu")


def _peer_lost(exc: RuntimeError) -> bool:
    import torch.distributed as dist

    text = str(exc).lower()
    return isinstance(exc, dist.DistError) or any(
        s in text for s in ("connection closed", "connection reset", "broken pipe", "gloo")
    )


def _train(
    model: nn.Module,
    data: TrainingData,
    settings: TrainSettings,
    resume: dict[str, Any] | None,
    on_epoch_end: EpochHook | None,
    info: dd.DistInfo,
) -> list[dict[str, float]]:
    device = resolve_device(settings.device, info)
    check_precision(settings.precision, device)
    torch.manual_seed(settings.seed)
    if resume is not None:
        model.load_state_dict(resume["model"])
    model.to(device)
    sync_bn = settings.sync_bn if settings.sync_bn is not None else info.distributed
    if info.distributed and sync_bn:
        model = dd.convert_batchnorm(model, device)
    sampler = dd.GlobalBatchSampler(
        len(cast(Any, data.train)),
        settings.batch_size,
        rank=info.rank,
        world_size=info.world_size,
        seed=settings.seed,
    )
    steps_per_epoch = len(sampler)
    optimizer = make_optimizer(model, settings)
    scheduler = make_scheduler(optimizer, settings, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")
    history: list[dict[str, float]] = []
    start = 0
    if resume is not None:
        start = int(resume["epoch"])
        history = list(resume["history"])
        _restore(optimizer, scheduler, scaler, resume, settings, steps_per_epoch, info, device)
    net: nn.Module = model
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            **_buffer_sync(sync_bn),
        )
    workers = (
        settings.workers
        if settings.workers is not None
        else default_workers(data.train, info.world_size)
    )
    collect = dd.broadcast_object(on_epoch_end is not None)
    progress = settings.progress and info.is_main
    for epoch in range(start, settings.epochs):
        set_schedule(model, epoch, settings.epochs)
        sampler.set_epoch(epoch)
        if hasattr(data.train, "set_epoch"):
            data.train.set_epoch(epoch)
        t0 = time.perf_counter()
        loss_sum, correct, seen = _epoch(
            net,
            data.train,
            sampler,
            optimizer,
            scheduler,
            scaler,
            settings,
            device,
            workers,
            epoch=epoch,
            progress=progress,
        )
        loss_sum, correct, seen = dd.all_sum([loss_sum, correct, seen], device)
        record: dict[str, float] | None = None
        if info.is_main:
            test_acc = evaluate(model, data.test, device, workers=workers)
            record = epoch_record(
                epoch,
                settings.epochs,
                total_loss=loss_sum,
                correct=int(correct),
                samples=int(seen),
                test_accuracy=test_acc,
                seconds=time.perf_counter() - t0,
                progress=progress,
                lr=float(optimizer.param_groups[0]["lr"]),
            )
        record = dd.broadcast_object(record)
        assert record is not None
        history.append(record)
        if collect:
            rngs = dd.gather_objects(rng_state(device))
            if on_epoch_end is not None:
                done = epoch + 1
                state = functools.partial(
                    _state,
                    model,
                    optimizer,
                    scheduler,
                    scaler,
                    rngs,
                    list(history),
                    done,
                    settings.epochs,
                    info,
                )
                seconds = max(record["seconds"], 1e-9)
                on_epoch_end(record | {"images_per_second": seen / seconds}, state)
            dd.barrier()
    return history


def _epoch(
    net: nn.Module,
    dataset: torch.utils.data.Dataset[Any],
    sampler: dd.GlobalBatchSampler,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    settings: TrainSettings,
    device: torch.device,
    workers: int,
    *,
    epoch: int,
    progress: bool,
) -> tuple[float, float, float]:
    from tqdm import tqdm

    net.train()
    sizes = sampler.global_sizes()
    world = sampler.world_size
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    bar = tqdm(
        total=len(sizes),
        desc=f"epoch {epoch + 1}/{settings.epochs}",
        unit="step",
        leave=False,
        disable=not progress,
    )
    pin = device.type == "cuda"
    with bar:
        for step, (xb, yb) in enumerate(
            _batches(dataset, sampler, workers=workers, pin_memory=pin)
        ):
            xb = xb.to(device, non_blocking=pin)
            yb = yb.to(device, non_blocking=pin)
            with autocast(device, settings.precision):
                logits = net(xb)
                summed = F.cross_entropy(logits.float(), yb, reduction="sum")
            # DDP averages over processes: this makes it the mean over the global batch
            loss = summed * (world / sizes[step])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total_loss += summed.detach().double()
            correct += (logits.detach().argmax(1) == yb).sum()
            seen += len(yb)
            bar.update(1)
            if progress and step % 10 == 0:  # reading the loss waits for the device
                bar.set_postfix(
                    loss=f"{float(summed.detach()) / max(len(yb), 1):.3f}", refresh=False
                )
    loss_value = float(total_loss)
    if not math.isfinite(loss_value):
        raise BnnExportError(
            f"training diverged in epoch {epoch + 1} (loss is {loss_value})",
            hint="retrain with a lower --lr (or --precision fp32)",
        )
    return loss_value, float(correct), float(seen)


def _state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    rngs: list[dict[str, Any]],
    history: list[dict[str, float]],
    epoch: int,
    epochs: int,
    info: dd.DistInfo,
) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "epochs": epochs,
        "world_size": info.world_size,
        "model": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "rng": rngs,
        "history": list(history),
    }


def _restore(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    state: dict[str, Any],
    settings: TrainSettings,
    steps_per_epoch: int,
    info: dd.DistInfo,
    device: torch.device,
) -> None:
    """Optimizer, LR schedule, loss scaler and RNGs as they were after the state's epoch.
    With the same total epochs the schedule continues exactly; with another total it is
    re-planned for that total and fast-forwarded over the steps already done (the rate
    jumps to where the new schedule is at that step)."""
    optimizer.load_state_dict(state["optimizer"])
    if int(state["epochs"]) == settings.epochs:
        scheduler.load_state_dict(state["scheduler"])
    else:
        # ``scheduler`` is already planned for ``settings.epochs``: replay it from the
        # initial rate over the steps done
        for group in optimizer.param_groups:
            group["lr"] = group.get("initial_lr", group["lr"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "step() before optimizer.step()"
            for _ in range(int(state["epoch"]) * steps_per_epoch):
                scheduler.step()
    if state.get("scaler") is not None and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    rngs = state.get("rng") or []
    if rngs:
        same_world = len(rngs) == info.world_size
        set_rng_state(rngs[info.rank] if same_world else rngs[0], device)
