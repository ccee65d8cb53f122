"""Data-parallel training support: the process group, global-batch sharding, batch norm
over the global batch on CPU, and the ``--nproc`` launcher.

A run with ``WORLD_SIZE > 1`` in its environment (``torchrun``, or ``train --nproc N``,
which starts ``torch.distributed.run``'s agent) trains one replica per process. The
global batch (``--batch-size``) is split evenly across the processes; gradients are
averaged by ``DistributedDataParallel``; the loss of each process is scaled so that the
average is the gradient of the mean loss over the global batch, whatever the split.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Sampler

from bnn_export.errors import BnnExportError

#: set in the environment of the processes ``launch`` starts (the launcher reports errors)
LAUNCHED_ENV = "BNN_EXPORT_LAUNCHED"


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a data-parallel run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints progress and writes the run directory."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise BnnExportError(
            f"environment variable {name}={value!r} is not an integer",
            hint="launch data-parallel runs with torchrun or `bnn-export train --nproc N`",
        ) from None


def from_env() -> DistInfo:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them (defaults: one process)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise BnnExportError(
            f"inconsistent process environment: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}",
            hint="launch data-parallel runs with torchrun or `bnn-export train --nproc N`",
        )
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def launched() -> bool:
    """Whether this process was started by ``launch`` (whose parent reports failures)."""
    return os.environ.get(LAUNCHED_ENV) == "1"


@contextlib.contextmanager
def process_group(info: DistInfo, device: torch.device) -> Iterator[None]:
    """Join the process group (gloo on CPU, nccl on CUDA) for the duration of the block;
    nothing to do for one process or a group that already exists."""
    import torch.distributed as dist

    if not info.distributed or dist.is_initialized():
        yield
        return
    if not dist.is_available():
        raise BnnExportError(
            "this PyTorch build has no torch.distributed",
            hint="train with one process, or install a PyTorch build with distributed support",
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(
            backend=backend, rank=info.rank, world_size=info.world_size, init_method="env://"
        )
    except ValueError as exc:  # e.g. MASTER_ADDR missing
        raise BnnExportError(
            f"cannot join the process group: {exc}",
            hint="launch data-parallel runs with torchrun or `bnn-export train --nproc N`",
        ) from None
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


class GlobalBatchSampler(Sampler[list[int]]):
    """Batches of indices for one process of ``world_size``: every epoch a permutation
    seeded by (seed, epoch) is cut into global batches of ``batch_size`` (the last one may
    be short), and each process takes its contiguous share of every global batch.

    So the samples of step s are the same whatever the number of processes, and N
    processes with a global batch B see exactly the batches one process with B sees
    (``torch.utils.data.DistributedSampler`` instead pads the dataset with repeated
    samples and strides over it). A final global batch with fewer samples than processes
    is dropped (never with one process)."""

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if batch_size % world_size:
            raise BnnExportError(
                f"--batch-size {batch_size} is not divisible by the {world_size} training "
                "processes (it is the global batch, split evenly across them)",
                hint=f"pass a --batch-size that is a multiple of {world_size}",
            )
        if size < 1:
            raise BnnExportError("the training set is empty", hint="check the dataset")
        self.size = size
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the permutation of ``epoch`` from now on."""
        self.epoch = epoch

    def _global_batches(self) -> list[np.ndarray]:
        if self.shuffle:
            rng = np.random.default_rng([self.seed % 2**63, self.epoch])
            order = rng.permutation(self.size)
        else:
            order = np.arange(self.size)
        batches = [order[i : i + self.batch_size] for i in range(0, self.size, self.batch_size)]
        if len(batches[-1]) < self.world_size:
            batches.pop()
        return batches

    def global_sizes(self) -> list[int]:
        """The global batch size of every step of the current epoch."""
        return [len(b) for b in self._global_batches()]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._global_batches():
            yield np.array_split(batch, self.world_size)[self.rank].tolist()

    def __len__(self) -> int:
        full, rest = divmod(self.size, self.batch_size)
        return full + (1 if rest >= self.world_size else 0)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the global batch (works on gloo,
    unlike ``nn.SyncBatchNorm``, which needs GPUs). One all-reduce forward (per channel:
    count, sum, and each process's sum of squares about its own mean, combined in float64)
    and one backward (the two per-channel sums the input gradient needs); normalisation and its
    gradient run as native whole-tensor ops. In evaluation mode, or outside a process
    group, it is a plain batch norm; its state dict is that of ``nn.BatchNorm*d``."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(input)
        self._check_input_dim(input)
        y, mean, var, count = _global_batch_norm(input.float(), self.weight, self.bias, self.eps)
        if self.track_running_stats and self.running_mean is not None:
            assert self.running_var is not None and self.num_batches_tracked is not None
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                unbiased = var * (count / max(count - 1.0, 1.0))
                self.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
        return y.to(input.dtype)


def _global_batch_norm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(y, global mean, global biased variance, global count per channel) of ``x``."""
    y, mean, var, count = _GlobalBatchNormFn.apply(x, weight, bias, eps)
    return y, mean, var, float(count)


class _GlobalBatchNormFn(torch.autograd.Function):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the global batch.

    Backward, for the sum of every process's loss (what the old autograd-through-all-reduce
    version computed): with g1 = sum(dy) and g2 = sum(dy * xhat) over the global batch,
    dx = weight * invstd * (dy - g1 / n - xhat * g2 / n); dweight, dbias are this
    process's own sums (DistributedDataParallel reduces them like any gradient). The local
    sums and dy * weight * invstd come from one native evaluation-mode batch-norm backward
    (2-3x faster than the same in separate tensor ops on CPU), the global correction is a
    per-channel multiply-add."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        import torch.distributed as dist

        dims = [0, *range(2, x.dim())]
        n_local = x.numel() // x.shape[1]
        # each process: its mean c_i and its sum of squares about it, M2_i (float32, two
        # passes: no cancellation); combined in float64 as sum(M2_i + n_i c_i^2) - n mu^2,
        # exact to ~1e-16 relative since the float32 c_i are exact in float64 and the
        # cross term 2 (c_i - mu) sum(x - c_i) is second order. (torch.var_mean over these
        # dims was ~3x slower than the whole native batch norm; float64 sums copy x.)
        c_i = x.mean(dims, keepdim=True)
        d = x - c_i
        m2_i = d.mul_(d).sum(dims).double()
        c64 = c_i.flatten().double()
        stats = torch.cat(
            [c64 * n_local, m2_i + c64 * c64 * n_local, c64.new_tensor([float(n_local)])]
        )
        dist.all_reduce(stats)
        c = x.shape[1]
        n = stats[-1]
        mean64 = stats[:c] / n
        var64 = (stats[c : 2 * c] / n - mean64 * mean64).clamp_min(0.0)
        mean, var = mean64.float(), var64.float()
        y = torch.nn.functional.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)
        ctx.save_for_backward(x, weight, mean, var)
        ctx.n = float(n)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, var, n)
        return y, mean, var, n

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, dy: torch.Tensor, *_: Any
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, None]:
        import torch.distributed as dist

        x, weight, mean, var = ctx.saved_tensors
        c = x.shape[1]
        w = weight if weight is not None else x.new_ones(c)
        # one native pass: an evaluation-mode batch norm's backward at the global statistics
        # gives dx0 = dy * w * invstd and this process's sum(dy * xhat), sum(dy)
        dx0, sum_dy_xhat, sum_dy = torch.ops.aten.native_batch_norm_backward(
            dy, x, w, mean, var, None, None, False, ctx.eps, [True, True, True]
        )
        sums = torch.cat([sum_dy, sum_dy_xhat])
        dist.all_reduce(sums)
        dx = None
        if ctx.needs_input_grad[0]:
            # dx = w * invstd * (dy - g1 / n - xhat * g2 / n) with the global sums g1, g2:
            # dx0 + a * x + b per channel, a = -w invstd^2 g2 / n, b = -w invstd g1 / n - a mean:
            # in place, no temporary (a fresh x-sized tensor costs as much as the arithmetic);
            # its rounding is that of x - mean in float32 (checked against float64 up to
            # |mean| / std = 1e6: same error as with x - mean)
            shape = [1, -1] + [1] * (x.dim() - 2)
            invstd = torch.rsqrt(var + ctx.eps)
            a = -w * invstd * invstd * sums[c:] / ctx.n
            b = -w * invstd * sums[:c] / ctx.n - a * mean
            dx = dx0.addcmul_(x, a.reshape(shape)).add_(b.reshape(shape))
        dw = sum_dy_xhat if weight is not None and ctx.needs_input_grad[1] else None
        db = sum_dy if ctx.needs_input_grad[2] else None
        return dx, dw, db, None


def convert_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Batch norm over the global batch: ``nn.SyncBatchNorm`` on CUDA, ``GlobalBatchNorm``
    elsewhere. Converts children in place; returns the (possibly new) root."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)


def _convert_cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, GlobalBatchNorm
    ):
        new = GlobalBatchNorm(
            module.num_features,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
        )
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in list(module.named_children()):
        converted = _convert_cpu(child)
        if converted is not child:
            module.add_module(name, converted)
    return module


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over the processes (the values themselves with one process)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` with one process)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every process (nothing to do with one)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def strip_nproc(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N`` (the workers must not relaunch)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        out.append(arg)
    return out


def launch(nproc: int, argv: list[str], output: str | None) -> None:
    """Run ``python -m bnn_export <argv>`` in ``nproc`` processes through
    ``torch.distributed.run``'s agent (standalone rendezvous on this host), as
    ``torchrun --standalone --nproc-per-node nproc -m bnn_export <argv>`` would. A process
    that fails stops the others; that is reported as one ``BnnExportError``, saying what
    became of the run directory ``output``."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.1,
    )
    stamp = _state_stamp(output)
    env_before = {k: os.environ.get(k) for k in (LAUNCHED_ENV, "OMP_NUM_THREADS")}
    os.environ[LAUNCHED_ENV] = "1"
    if env_before["OMP_NUM_THREADS"] is None:  # else the agent sets 1 and logs a warning
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    names = ["torch.distributed", *logging.Logger.manager.loggerDict]
    loggers = [logging.getLogger(n) for n in names if n.startswith("torch.distributed")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        elastic_launch(config, sys.executable)("-m", "bnn_export", *argv)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode
        if code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with status {code}"
        raise BnnExportError(
            f"training process rank {rank} of {nproc} {how}; the others were stopped. "
            + _output_fate(output, stamp),
            hint=_resume_hint(output, stamp) or "see the process's error above",
        ) from None
    except SignalException as exc:
        interrupted = KeyboardInterrupt(f"signal {exc.sigval}")
        interrupted.signum = int(exc.sigval)  # type: ignore[attr-defined]
        interrupted.bnn_export_detail = _output_fate(output, stamp) + (  # type: ignore[attr-defined]
            f" Continue with: bnn-export train --resume {output}"
            if _resume_hint(output, stamp)
            else ""
        )
        raise interrupted from None
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        for key, value in env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _state_stamp(output: str | None) -> int | None:
    """When ``output``'s resumable state was last written (None: there is none)."""
    from bnn_export.resume import RESUME_NAME

    if output is None:
        return None
    try:
        return (Path(output) / RESUME_NAME).stat().st_mtime_ns
    except OSError:
        return None


def _output_fate(output: str | None, before: int | None) -> str:
    """What the launched run left in ``output`` (``before``: its state's stamp at launch)."""
    if output is None:
        return "No output was written (no -o)."
    from bnn_export.resume import completed_epochs

    now = _state_stamp(output)
    if now is not None and now == before:
        return (
            f"Nothing was written: {output} is as it was (resumable from epoch "
            f"{completed_epochs(output)})."
        )
    if now is None:
        if Path(output).exists():
            return f"Nothing was written: {output} is as it was."
        return "No run directory was written."
    return f"{output} holds the state after epoch {completed_epochs(output)}."


def _resume_hint(output: str | None, before: int | None) -> str | None:
    now = _state_stamp(output)
    if output is not None and now is not None and now != before:
        return f"continue it with: bnn-export train --resume {output}"
    return None
