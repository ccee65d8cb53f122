"""Determinism: one checkpoint converts to byte-identical artifacts, wherever it lies;
training larq with one seed reproduces metrics.json and the checkpoint (torch: see
tests/test_cli_train.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bnn_export.binarizers import get
from bnn_export.checkpoint import Checkpoint, save_checkpoint
from bnn_export.cli import main
from bnn_export.models import arch_spec
from bnn_export.models.torch_build import build_torch_model, torch_state
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def two_copies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same run directory at two different paths."""
    root = tmp_path_factory.mktemp("determinism")
    arch = arch_spec("digits")
    config = get("equal_bits", bit_ratio=0.4)
    model = build_torch_model(arch, config, seed=3)
    (root / "a").mkdir()
    save_checkpoint(
        root / "a" / "checkpoint.safetensors",
        Checkpoint("torch", arch, config, "digits", torch_state(model)),
    )
    shutil.copytree(root / "a", root / "elsewhere" / "b")
    return root / "a", root / "elsewhere" / "b"


def _convert(src: Path, out: Path, *args: str) -> bytes:
    assert main(["convert", str(src), "-o", str(out), "--json", *args]) == 0
    return out.read_bytes()


@pytest.mark.parametrize(
    "args",
    [
        ("--format", "onnx", "--target", "onnxruntime"),
        ("--format", "onnx", "--target", "openvino", "--no-validate"),
        ("--format", "onnx", "--target", "reference", "--no-validate"),
        ("--format", "onnx", "--bit-ratio", "0.3", "--no-validate"),  # OT fix + BN re-estimate
        ("--format", "tflite", "--no-validate"),
    ],
)
def test_conversion_is_byte_identical(
    two_copies: tuple[Path, Path], tmp_path: Path, args: tuple[str, ...]
) -> None:
    a, b = two_copies
    first = _convert(a, tmp_path / "1.out", *args)
    second = _convert(b, tmp_path / "2.out", *args)
    assert first == second


def test_larq_same_seed_reproduces_metrics_and_checkpoint(tmp_path: Path) -> None:
    metrics = []
    for name in ("r1", "r2"):
        done = run_cli(
            "train",
            "--framework",
            "larq",
            "--epochs",
            "1",
            "--seed",
            "5",
            "--quiet",
            "-o",
            str(tmp_path / name),
        )
        assert done.returncode == 0, done.stderr[-2000:]
        m = json.loads((tmp_path / name / "metrics.json").read_text())
        m.pop("train_seconds")
        for h in m["history"]:
            h.pop("seconds")
        metrics.append(m)
    assert metrics[0] == metrics[1]
    ckpts = [(tmp_path / n / "checkpoint.safetensors").read_bytes() for n in ("r1", "r2")]
    assert ckpts[0] == ckpts[1]
