"""Artifacts for the bench tests, made on first use (once per session) with the real CLI."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli


class Artifacts:
    """``run``: a trained run dir (the reference); ``onnx[target]``: its three .onnx exports;
    ``tflite``: a tiny LCE flatbuffer (random weights, no bnn-export metadata)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @functools.cached_property
    def run(self) -> Path:
        run = self.root / "run"
        done = run_cli("train", "--epochs", "1", "-o", str(run), "--quiet")
        if done.returncode != 0:
            pytest.fail(f"train failed:\n{done.stderr}")
        return run

    @functools.cached_property
    def onnx(self) -> dict[str, Path]:
        out = {}
        for target in ("onnxruntime", "openvino", "reference"):
            path = self.root / f"{target}.onnx"
            done = run_cli("convert", str(self.run), "--format", "onnx", "--target", target,
                           "-o", str(path), "--no-validate")  # fmt: skip
            if done.returncode != 0:
                pytest.fail(f"convert --target {target} failed:\n{done.stderr}")
            out[target] = path
        return out

    @functools.cached_property
    def tflite(self) -> Path:
        path = self.root / "tiny lce.tflite"
        done = subprocess.run(
            [sys.executable, str(Path(__file__).parent / "lce_tiny_model.py"), str(path)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if done.returncode != 0 or not path.is_file():
            pytest.fail(f"building the LCE test model failed:\n{done.stderr[-3000:]}")
        return path
