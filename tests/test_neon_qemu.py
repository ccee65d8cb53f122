"""Cross-compile the static test runner for aarch64 and run NEON vs portable under qemu."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CROSS_CC = "aarch64-linux-gnu-gcc"
QEMU = "qemu-aarch64-static"


@pytest.mark.skipif(
    shutil.which(CROSS_CC) is None or shutil.which(QEMU) is None,
    reason=f"{CROSS_CC} or {QEMU} not installed "
    "(apt-get install gcc-aarch64-linux-gnu qemu-user-static)",
)
def test_neon_kernel_exact_under_qemu(tmp_path: Path) -> None:
    rt = ROOT / "runtime"
    exe = tmp_path / "test_runner_aarch64"
    subprocess.run(
        [
            CROSS_CC,
            "-std=c11",
            "-O2",
            "-static",
            "-ffp-contract=off",
            f"-I{rt}",
            str(rt / "test_runner.c"),
            str(rt / "bnn_core.c"),
            str(rt / "bnn_neon.c"),
            "-o",
            str(exe),
            "-lpthread",
            "-lm",
        ],
        check=True,
    )
    res = subprocess.run(
        [QEMU, str(exe), "250", "4242"], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "variants: portable neon" in res.stdout, res.stdout
    assert "500 passed, 0 failed" in res.stdout, res.stdout
