"""Cross-compile the static test runner for ARM and run NEON vs portable under qemu."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RT = ROOT / "runtime"

TARGETS = {
    # name: (cross compiler, qemu, extra flags for bnn_neon.c, apt packages)
    "aarch64": (
        "aarch64-linux-gnu-gcc",
        "qemu-aarch64-static",
        [],
        "gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static",
    ),
    "armhf": (
        "arm-linux-gnueabihf-gcc",
        "qemu-arm-static",
        ["-mfpu=neon"],
        "gcc-arm-linux-gnueabihf libc6-dev-armhf-cross qemu-user-static",
    ),
}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_neon_kernel_exact_under_qemu(target: str, tmp_path: Path) -> None:
    cc, qemu, neon_flags, packages = TARGETS[target]
    if shutil.which(cc) is None or shutil.which(qemu) is None:
        pytest.skip(f"{cc} or {qemu} not installed (apt-get install {packages})")
    flags = ["-std=c11", "-O2", "-ffp-contract=off", f"-I{RT}"]
    core, neon = tmp_path / "core.o", tmp_path / "neon.o"
    exe = tmp_path / f"test_runner_{target}"
    subprocess.run([cc, *flags, "-c", str(RT / "bnn_core.c"), "-o", str(core)], check=True)
    subprocess.run(
        [cc, *flags, *neon_flags, "-c", str(RT / "bnn_neon.c"), "-o", str(neon)], check=True
    )
    subprocess.run(
        [
            cc,
            *flags,
            "-static",
            str(RT / "test_runner.c"),
            str(core),
            str(neon),
            "-o",
            str(exe),
            "-lpthread",
            "-lm",
        ],
        check=True,
    )
    res = subprocess.run(
        [qemu, str(exe), "250", "4242"], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "variants: portable neon" in res.stdout, res.stdout
    assert "500 passed, 0 failed" in res.stdout, res.stdout
