"""Artifacts for the bench tests, made once per session with the real CLI and converters."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import run_cli


@dataclass(frozen=True)
class Artifacts:
    run: Path  # a trained run dir (the reference)
    onnx: dict[str, Path]  # target -> .onnx
    tflite: Path  # a tiny LCE flatbuffer (random weights, no bnn-export metadata)


def make_artifacts(root: Path) -> Artifacts:
    run = root / "run"
    done = run_cli("train", "--epochs", "1", "-o", str(run), "--quiet")
    if done.returncode != 0:
        pytest.fail(f"train failed:\n{done.stderr}")
    onnx = {}
    for target in ("onnxruntime", "openvino", "reference"):
        out = root / f"{target}.onnx"
        done = run_cli("convert", str(run), "--format", "onnx", "--target", target,
                       "-o", str(out), "--no-validate")  # fmt: skip
        if done.returncode != 0:
            pytest.fail(f"convert --target {target} failed:\n{done.stderr}")
        onnx[target] = out
    tflite = root / "tiny lce.tflite"
    done = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "lce_tiny_model.py"), str(tflite)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if done.returncode != 0 or not tflite.is_file():
        pytest.fail(f"building the LCE test model failed:\n{done.stderr[-3000:]}")
    return Artifacts(run, onnx, tflite)
