"""The README's Python example is examples/readme_example.py, and it runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "readme_example.py"


def readme_python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def test_readme_example_is_the_example_file() -> None:
    blocks = readme_python_blocks()
    assert len(blocks) == 1, f"expected one ```python block in README.md, found {len(blocks)}"
    assert blocks[0] == EXAMPLE.read_text(encoding="utf-8"), (
        "README.md's python block and examples/readme_example.py differ; keep them identical"
    )


def test_readme_example_runs(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "digits.onnx").stat().st_size > 0
    ops = re.search(r"^(\d+) binary ops, agreement ([\d.]+)%$", proc.stdout, flags=re.MULTILINE)
    accuracy = re.search(r"^test accuracy ([\d.]+)%$", proc.stdout, flags=re.MULTILINE)
    assert ops and accuracy, proc.stdout
    assert int(ops[1]) == 2 and float(ops[2]) >= 99.5, proc.stdout
    assert float(accuracy[1]) > 50.0, proc.stdout  # chance is 10%


def test_hand_written_reactnet_block_example_exports_to_both_formats(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "reactnet_block.py"), "--tflite"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    line = r"^\.(onnx|tflite): (\d+) of (\d+) binary layers are (\w+), agreement ([\d.]+)%, "
    found = {m[0]: m[1:] for m in re.findall(line, proc.stdout, flags=re.MULTILINE)}
    assert found["onnx"][:3] == ("4", "4", "BinaryConv2d"), proc.stdout
    assert found["tflite"][:3] == ("4", "4", "LceBconv2d"), proc.stdout
    assert all(float(v[3]) >= 99.5 for v in found.values()), proc.stdout
    assert (tmp_path / "reactnet_block.tflite").stat().st_size > 0
