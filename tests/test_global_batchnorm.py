"""GlobalBatchNorm (batch norm over the global batch on gloo): two processes holding
halves of a batch (uneven too) compute what one nn.BatchNorm2d computes on the whole batch:
the output, the input gradient, the affine gradients (summed over the processes, as DDP
reduces them) and the running statistics."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch import nn

from bnn_export.distributed import GlobalBatchNorm

SPLIT = (5, 3)  # samples per process: an uneven split of a batch of 8


def _case(seed: int) -> tuple[torch.Tensor, torch.Tensor, nn.BatchNorm2d]:
    g = torch.Generator().manual_seed(seed)
    # a large mean beside a small spread: what float32 raw moments would get wrong
    x = torch.randn(sum(SPLIT), 6, 5, 4, generator=g, dtype=torch.float64) * 0.5 + 30.0
    dy = torch.randn(x.shape, generator=g, dtype=torch.float64)
    bn = nn.BatchNorm2d(6, momentum=0.3)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(6, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(6, generator=g))
    return x.float(), dy.float(), bn


def _worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        x, dy, ref = _case(0)
        bn = GlobalBatchNorm(6, momentum=0.3)
        bn.load_state_dict(ref.state_dict())
        lo = sum(SPLIT[:rank])
        xs = x[lo : lo + SPLIT[rank]].clone().requires_grad_(True)
        y = bn(xs)
        y.backward(dy[lo : lo + SPLIT[rank]])
        torch.save(
            {
                "y": y.detach(),
                "dx": xs.grad,
                "dw": bn.weight.grad,
                "db": bn.bias.grad,
                "state": bn.state_dict(),
            },
            Path(out, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_processes_match_one_batch_norm_on_the_whole_batch() -> None:
    x, dy, ref = _case(0)
    xr = x.clone().requires_grad_(True)
    ref.train()
    yr = ref(xr)
    yr.backward(dy)
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
        got = [torch.load(Path(out, f"rank{r}.pt")) for r in range(2)]
    y = torch.cat([g["y"] for g in got])
    dx = torch.cat([g["dx"] for g in got])
    torch.testing.assert_close(y, yr.detach(), rtol=0, atol=2e-5)
    torch.testing.assert_close(dx, xr.grad, rtol=0, atol=2e-5)
    assert ref.weight.grad is not None and ref.bias.grad is not None
    torch.testing.assert_close(got[0]["dw"] + got[1]["dw"], ref.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[0]["db"] + got[1]["db"], ref.bias.grad, rtol=1e-5, atol=1e-5)
    for g in got:  # both processes keep the same running statistics: those of one process
        for key in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(g["state"][key], ref.state_dict()[key], rtol=1e-5, atol=1e-6)


def test_outside_a_process_group_it_is_a_plain_batch_norm() -> None:
    x, dy, ref = _case(1)
    bn = GlobalBatchNorm(6, momentum=0.3)
    bn.load_state_dict(ref.state_dict())
    torch.testing.assert_close(bn(x), ref(x), rtol=0, atol=0)
