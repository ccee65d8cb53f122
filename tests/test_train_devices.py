"""Devices and precision of the PyTorch trainer: device resolution and its errors,
bf16 on the CPU, fp16 refused there; CUDA cases where a GPU is present."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from bnn_export.cli import main
from bnn_export.distributed import DistInfo
from bnn_export.errors import BnnExportError
from bnn_export.train_torch import check_precision, resolve_device

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device")
FAST = ["--epochs", "1", "--batch-size", "128", "--quiet"]


def test_auto_picks_cuda_only_when_present() -> None:
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")


def test_unknown_device_is_refused() -> None:
    with pytest.raises(BnnExportError, match="unknown device 'tpu'") as exc:
        resolve_device("tpu")
    assert "cuda:N" in (exc.value.hint or "")


@pytest.mark.skipif(CUDA, reason="checks the error without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(BnnExportError, match=f"--device {spec}: no CUDA device is available"):
            resolve_device(spec)
    assert main(["train", *FAST, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device is available" in err and "use --device cpu" in err


def test_mps_without_mps_is_a_clear_error() -> None:
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        pytest.skip("an MPS device is present")
    with pytest.raises(BnnExportError, match="no Apple MPS device"):
        resolve_device("mps")


def test_fp16_on_cpu_is_refused_bf16_allowed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(BnnExportError, match="fp16 is not supported on the CPU") as exc:
        check_precision("fp16", torch.device("cpu"))
    assert "bf16" in (exc.value.hint or "")
    check_precision("bf16", torch.device("cpu"))
    check_precision("fp32", torch.device("cpu"))
    assert main(["train", *FAST, "--device", "cpu", "--precision", "fp16"]) == 2
    assert "fp16 is not supported on the CPU" in capsys.readouterr().err


def test_bf16_on_cpu_trains_and_checkpoints_float32(tmp_path: Path) -> None:
    out = tmp_path / "R"
    assert main(["train", *FAST, "--device", "cpu", "--precision", "bf16", "-o", str(out)]) == 0
    tensors = load_file(str(out / "checkpoint.safetensors"))
    floats = [v for v in tensors.values() if v.dtype.kind == "f"]
    assert floats and all(v.dtype == np.float32 for v in floats)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["precision"] == "bf16"
    assert metrics["test_accuracy"] > 0.3  # learned something in one epoch


def test_one_gpu_per_process_when_data_parallel() -> None:
    info = DistInfo(rank=1, world_size=2, local_rank=1)
    if not CUDA:
        with pytest.raises(BnnExportError, match="no CUDA device"):
            resolve_device("cuda", info)
        return
    if torch.cuda.device_count() > 1:
        assert resolve_device("cuda", info) == torch.device("cuda", 1)
    with pytest.raises(BnnExportError, match="names one GPU"):
        resolve_device("cuda:0", info)


def test_larq_refuses_torch_only_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--framework", "larq", "--device", "cpu"]) == 2
    assert "--device is an option of the PyTorch trainer" in capsys.readouterr().err


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_training(tmp_path: Path, precision: str) -> None:
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    out = tmp_path / "R"
    args = ["train", *FAST, "--device", "cuda", "--precision", precision, "-o", str(out)]
    assert main(args) == 0
    tensors = load_file(str(out / "checkpoint.safetensors"))
    assert all(v.dtype == np.float32 for v in tensors.values() if v.dtype.kind == "f")
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] > 0.3


@needs_cuda
def test_cuda_device_beyond_the_count_is_refused() -> None:
    n = torch.cuda.device_count()
    with pytest.raises(BnnExportError, match=f"no CUDA device {n}"):
        resolve_device(f"cuda:{n}")
