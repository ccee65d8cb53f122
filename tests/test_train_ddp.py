"""Data-parallel training (DDP on gloo, CPU): N processes with a global batch B reach the
weights one process with B reaches; the CLI's --nproc and torchrun; a dying worker."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from bnn_export import binarizers
from bnn_export import distributed as dd
from bnn_export.datasets import load_dataset
from bnn_export.errors import BnnExportError
from bnn_export.models import arch_spec
from bnn_export.models.layers import BinaryConv2d, BinaryLinear
from bnn_export.models.torch_build import build_torch_model, torch_state
from bnn_export.train_settings import TrainSettings
from bnn_export.train_torch import train

ROOT = Path(__file__).resolve().parents[1]
SLOW = os.environ.get("BNN_SLOW_TESTS") == "1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _small_digits(n: int = 136):  # type: ignore[no-untyped-def]
    data = load_dataset("digits")
    # 136 samples, global batch 64: 2 full steps and a short one of 8 (4 per process)
    return dataclasses.replace(
        data,
        x_train=data.x_train[:n],
        y_train=data.y_train[:n],
        x_test=data.x_test[:64],
        y_test=data.y_test[:64],
    )


def _model(kind: str, binarizer: str) -> torch.nn.Module:
    """``zoo``: the digits CNN (batch norm: GlobalBatchNorm with 2 processes); ``plain``: a
    float conv, a binary conv and a binary dense layer, no batch norm."""
    config = binarizers.get(binarizer)
    if kind == "zoo":
        return build_torch_model(arch_spec("digits", num_classes=10), config, seed=3)
    torch.manual_seed(3)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3),
        BinaryConv2d(8, 16, 3, binarizer=config),
        torch.nn.Flatten(),
        BinaryLinear(16 * 4 * 4, 10, binarizer=config),
    )


def _train_weights(case: str, rank: int, world: int, epochs: int) -> dict[str, np.ndarray]:
    kind, binarizer = case.split(":")
    model = _model(kind, binarizer)
    settings = TrainSettings(
        epochs=epochs,
        batch_size=64,
        lr=1e-2,
        seed=5,
        progress=False,
        device="cpu",
        num_threads=1,
        optimizer="sgd",
    )
    info = dd.DistInfo(rank=rank, world_size=world, local_rank=rank)
    with dd.process_group(info, torch.device("cpu")):
        train(model, _small_digits(), settings, dist_info=info)
    return torch_state(model)


def _worker(rank: int, world: int, port: int, case: str, epochs: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    state = _train_weights(case, rank, world, epochs)
    np.savez(out if rank == 0 else f"{out}.rank{rank}.npz", **state)


@pytest.mark.parametrize("case", ["zoo:ste", "plain:siman"])
def test_two_processes_match_one_with_the_same_global_batch(tmp_path: Path, case: str) -> None:
    """2 processes x 32 samples == 1 process x 64 samples, step for step (3 steps, the
    last a short global batch of 8): the loss scaling makes DDP's averaged gradient the
    global-batch mean, GlobalBatchNorm normalizes over the global batch (zoo model), and
    binarizer state stays identical across the processes: SiMaN's per-channel alpha
    (initialized in the first forward) and clipping buffer.

    Exactness needs arithmetic where float summation order cannot flip a sign: the digits
    CNN with ste (integer-valued pre-activations), and a model without batch norm for the
    binarizers with real-valued weights (there, float noise in the batch statistics flips
    an activation sign now and then). SGD, not Adam: Adam divides each update by the
    gradient's magnitude, so for near-zero gradients summation order decides the step."""
    out = tmp_path / "ddp.npz"
    mp.spawn(_worker, args=(2, _free_port(), case, 1, str(out)), nprocs=2, join=True)
    two = dict(np.load(out))
    one = _train_weights(case, 0, 1, epochs=1)
    assert sorted(two) == sorted(one)
    for name in one:
        # running variances (~1e2) are float32 sums over the batch in another order
        rtol = 5e-5 if name.endswith("running_var") else 1e-5
        np.testing.assert_allclose(two[name], one[name], rtol=rtol, atol=1e-5, err_msg=name)
    # every rank ends with the same model, buffers included: with GlobalBatchNorm, DDP does
    # not broadcast rank 0's buffers before each forward (the statistics are global)
    other = dict(np.load(f"{out}.rank1.npz"))
    for name in two:
        np.testing.assert_array_equal(other[name], two[name], err_msg=name)
    # the comparison can fail: training moved the weights away from their initial values
    init = torch_state(_model(*case.split(":")))
    moved = [k for k in one if k.endswith("weight") and not np.allclose(one[k], init[k])]
    assert len(moved) >= 2


def test_ddp_syncs_buffers_every_forward_only_with_per_process_batch_norm() -> None:
    from bnn_export.train_torch import _buffer_sync

    ((key, value),) = _buffer_sync(sync_bn=True).items()
    assert key in ("forward_sync_buffers", "broadcast_buffers") and value is False
    assert _buffer_sync(sync_bn=False) == {key: True}


def test_global_batch_sampler_shards_cover_the_global_batches() -> None:
    one = dd.GlobalBatchSampler(100, 16, seed=7)
    shards = [dd.GlobalBatchSampler(100, 16, rank=r, world_size=4, seed=7) for r in range(4)]
    for epoch in (0, 3):
        for s in [one, *shards]:
            s.set_epoch(epoch)
        whole = list(one)
        parts = [list(s) for s in shards]
        assert [len(p) for p in parts] == [len(whole)] * 4 == [len(s) for s in shards]
        for step, batch in enumerate(whole):
            assert [i for p in parts for i in p[step]] == batch
    assert one.global_sizes() == [16] * 6 + [4]
    first = list(one)
    one.set_epoch(4)
    assert list(one) != first  # reshuffled per epoch
    with pytest.raises(BnnExportError, match="not divisible"):
        dd.GlobalBatchSampler(100, 10, world_size=4)
    # a last global batch smaller than the process count is dropped
    assert len(dd.GlobalBatchSampler(65, 16, rank=0, world_size=4)) == 4
    assert len(list(dd.GlobalBatchSampler(65, 16, rank=3, world_size=4))) == 4


def _cli(*args: str, **kw):  # type: ignore[no-untyped-def]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return subprocess.run(
        [sys.executable, "-m", "bnn_export", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        **kw,
    )


COMMON = ["train", "--epochs", "1", "--device", "cpu", "--quiet", "--batch-size", "64"]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    out = tmp_path_factory.mktemp("single") / "R"
    r = _cli(*COMMON, "-o", str(out))
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert {"checkpoint.safetensors", "metrics.json", "metrics.jsonl", "resume.pt"} <= set(names)
    return names


def test_nproc_run_writes_the_files_a_single_process_run_writes(
    tmp_path: Path, single_run: list[str]
) -> None:
    two = _cli(*COMMON, "--nproc", "2", "--json", "-o", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr
    metrics = json.loads(two.stdout)  # printed once, by rank 0
    assert metrics["epochs"] == 1 and metrics["settings"]["device"] == "cpu"
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == single_run
    assert not [line for line in two.stderr.splitlines() if line.startswith("error")]
    assert "Warning" not in two.stderr, two.stderr


def test_torchrun_run_writes_the_files_a_single_process_run_writes(
    tmp_path: Path, single_run: list[str]
) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "bnn_export",
            *COMMON,
            "-o",
            str(tmp_path / "R"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("test accuracy") == 1  # rank 0 reports
    assert sorted(p.name for p in (tmp_path / "R").iterdir()) == single_run


def test_nproc_refuses_a_batch_it_cannot_split(tmp_path: Path) -> None:
    r = _cli(
        "train", "--epochs", "1", "--batch-size", "63", "--nproc", "2", "-o", str(tmp_path / "R")
    )
    assert r.returncode == 2
    assert "not divisible by --nproc 2" in r.stderr
    assert not (tmp_path / "R").exists()


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds workers in /proc")
def test_a_killed_worker_fails_the_run_with_one_error_and_no_run_directory(tmp_path: Path) -> None:
    out = tmp_path / "R"
    marker = f"{os.getpid()}-{time.monotonic_ns()}"
    # resnet20 on digits: its first epoch takes far longer than the wait before the kill
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bnn_export",
            "train",
            "--model",
            "resnet20",
            "--epochs",
            "2",
            "--device",
            "cpu",
            "--nproc",
            "2",
            "--quiet",
            "-o",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "OMP_NUM_THREADS": "1",
            "BNN_TEST_MARKER": marker,
        },
    )
    try:
        victim = _find_worker(marker, rank=1, proc=proc)
        time.sleep(3)  # into training
        os.kill(victim, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "was killed by SIGKILL" in errors[0] or "exited with status" in errors[0], stderr
    assert "No run directory was written" in errors[0], stderr
    assert "Traceback" not in stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".R.")]


def _find_worker(marker: str, *, rank: int, proc: subprocess.Popen[str]) -> int:
    """The pid of the worker process of ``rank`` whose environment carries ``marker``."""
    want = {f"BNN_TEST_MARKER={marker}".encode(), f"RANK={rank}".encode()}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                env = set((entry / "environ").read_bytes().split(b"\0"))
            except OSError:
                continue
            if want <= env:
                return int(entry.name)
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.communicate()}")
        time.sleep(0.1)
    raise AssertionError("no worker process appeared")


@pytest.mark.skipif(not SLOW, reason="slow (resnet20 under torchrun); BNN_SLOW_TESTS=1")
def test_torchrun_resnet20_matches_a_single_process_run_layout(tmp_path: Path) -> None:
    args = [
        "train",
        "--model",
        "resnet20",
        "--dataset",
        "digits",
        "--device",
        "cpu",
        "--epochs",
        "2",
        "--quiet",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "bnn_export",
            *args,
            "-o",
            str(tmp_path / "R"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    single = _cli(*args, "-o", str(tmp_path / "S"))
    assert single.returncode == 0, single.stderr
    assert sorted(p.name for p in (tmp_path / "R").iterdir()) == sorted(
        p.name for p in (tmp_path / "S").iterdir()
    )


def test_sigterm_to_an_nproc_run_stops_every_process_and_leaves_it_resumable(
    tmp_path: Path,
) -> None:
    out = tmp_path / "R"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bnn_export",
            "train",
            "--epochs",
            "40",
            "--device",
            "cpu",
            "--quiet",
            "--nproc",
            "2",
            "-o",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").is_file() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert f"{out} holds the state after epoch" in errors[0]
    assert f"bnn-export train --resume {out}" in errors[0]
    assert (out / "resume.pt").is_file() and not (out / "checkpoint.safetensors").exists()


def test_the_launcher_tells_what_a_failed_run_left(tmp_path: Path) -> None:
    from bnn_export.resume import save_state

    out = tmp_path / "R"
    assert dd._output_fate(None, None) == "No output was written (no -o)."
    assert dd._output_fate(str(out), None) == "No run directory was written."
    out.mkdir()
    (out / "checkpoint.safetensors").write_bytes(b"an older, finished run")
    assert dd._output_fate(str(out), None) == f"Nothing was written: {out} is as it was."
    save_state(out, {"run": {}, "history": [], "epoch": 2})
    before = dd._state_stamp(str(out))
    assert before is not None
    # the state was there before the launch and is untouched: an older run's, or the
    # one being resumed
    assert "is as it was (resumable from epoch 2)" in dd._output_fate(str(out), before)
    assert dd._resume_hint(str(out), before) is None
    # written by this run
    assert dd._output_fate(str(out), None) == f"{out} holds the state after epoch 2."
    assert dd._resume_hint(str(out), None) == f"continue it with: bnn-export train --resume {out}"
