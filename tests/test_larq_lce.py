"""Every binarizer's Larq digits model converts with Larq Compute Engine into a
flatbuffer with one ``LceBconv2d`` per binary conv / binary dense layer. Conversion
runs in a subprocess (the converter can abort its process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bnn_export.binarizers import REGISTRY

pytest.importorskip("larq_compute_engine")
pytest.importorskip("tflite")

pytestmark = [pytest.mark.larq, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def convert_ops(arch: str, binarizer: str, pad_value: str, tmp_path: Path) -> dict:  # type: ignore[type-arg]
    out = tmp_path / "ops.json"
    res = subprocess.run(
        [sys.executable, "-m", "tests.lce_child", arch, binarizer, pad_value, str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(out.read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize("binarizer", [n for n, info in REGISTRY.items() if info.binary])
def test_digits_converts_to_lce_bconv(binarizer: str, tmp_path: Path) -> None:
    result = convert_ops("digits", binarizer, "1", tmp_path)
    ops = result["ops"]
    assert result["binary_layers"] == 3  # conv1, conv2, fc1
    assert ops.count("LceBconv2d") == 3, ops
    assert "LceQuantize" in ops
    # the LCE interpreter computes what the Keras model computes
    assert result["max_abs_diff"] <= 1e-4 * (result["max_abs_logit"] + 1), result


@pytest.mark.parametrize("binarizer", ["ste", "siman", "sdbnn"])
def test_resnet20_strided_binary_convs_convert_too(binarizer: str, tmp_path: Path) -> None:
    """PyTorch-style padding of stride-2 binary convs (pad value +1) stays convertible,
    also when the activation quantizer reads the whole map (SiMaN centring, SD-BNN SE):
    the +1 pad goes between that and the sign."""
    result = convert_ops("resnet20", binarizer, "1", tmp_path)
    assert result["binary_layers"] == 18
    assert result["ops"].count("LceBconv2d") == 18, result["ops"]
    assert result["max_abs_diff"] <= 1e-4 * (result["max_abs_logit"] + 1), result


def test_float_baseline_has_no_binary_ops(tmp_path: Path) -> None:
    ops = convert_ops("digits", "none", "1", tmp_path)["ops"]
    assert not [op for op in ops if op.startswith("Lce")], ops
