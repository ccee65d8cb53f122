"""Issue 14's must-show at test size, through the CLI: train birealnet18 on an
``imagefolder:DIR`` tree with DataLoader workers, convert the run to .onnx and .tflite:
every binary layer a binary op, top-1 agreement >= 99.5% with the trained PyTorch model
on the tree's val split. (The by-hand run at --input-size 64 is in docs/results.md.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import run_cli

CLASSES = ("blue", "green", "red")  # class c's images lean to colour channel 2 - c


def write_tree(root: Path, train: int = 6, val: int = 3, seed: int = 0) -> Path:
    """A seeded ImageNet-layout tree of PNG and JPEG images of varied sizes, each class
    tinted towards its own colour (so a trained model's predictions are not constant)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = (int(v) for v in rng.integers(36, 56, size=2))
                pixels = rng.integers(0, 120, (h, w, 3))
                pixels[..., 2 - c] += 120
                ext = ("png", "jpg")[i % 2]
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{name}_{i}.{ext}")
    return root


def test_birealnet18_on_an_imagefolder_trains_and_converts_to_both_formats(
    tmp_path: Path,
) -> None:
    tree = write_tree(tmp_path / "tree")
    run = tmp_path / "run"
    proc = run_cli(
        "train", "--model", "birealnet18", "--width", "0.125", "--input-size", "32",
        "--dataset", f"imagefolder:{tree}", "--workers", "2", "--epochs", "1",
        "--quiet", "-o", str(run),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dataset"] == f"imagefolder:{tree}"
    assert metrics["settings"]["workers"] == 2
    assert metrics["arch"]["kwargs"]["input_shape"] == [3, 32, 32]
    assert metrics["arch"]["kwargs"]["num_classes"] == len(CLASSES)
    for fmt, op in (("onnx", "BinaryConv2d"), ("tflite", "LceBconv2d")):
        out = tmp_path / f"birealnet18.{fmt}"
        proc = run_cli("convert", str(run), "--format", fmt, "-o", str(out), "--json")
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        facts, validation = report["facts"], report["validation"]
        assert facts["binary_op"] == op and facts["float_fallbacks"] == []
        # birealnet18: 16 binary 3x3 convs (the stem, downsampling 1x1s and head stay float)
        assert facts["binary_ops"] == facts["binary_layers"] == 16, report
        # validated on the tree's val split (3 classes x 3 images), not on digits
        assert validation["samples"] == len(CLASSES) * 3
        assert validation["ok"] and validation["agreement"] >= 0.995, report["summary"]
        assert out.stat().st_size == report["bytes"]
