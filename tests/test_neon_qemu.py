"""Cross-compile the static test runner for ARM and run NEON vs portable under qemu.

Two checks per target (aarch64, armhf):
* every conv of tests/conv_cases.py's EDGE_CASES with both pad values, the expected output
  from the numpy reference (onnx_ops.binary_conv2d_reference), through every variant the
  emulated CPU has at 1, 2, 3 and 4 threads, compared bit-exactly;
* the runner's own random shapes against its naive convolution and the portable variant.
"""

from __future__ import annotations

import dataclasses
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from bnn_export.convert import onnx_ops
from tests.conv_cases import EDGE_CASES, Conv, random_inputs

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

#: every conv case, both pad values
CASES = [dataclasses.replace(c, pad_value=pv) for c in EDGE_CASES for pv in (0, 1)]
THREADS = 4  # the runner tries 1..4


def _build(target: str, tmp_path: Path) -> tuple[str, Path]:
    cc, qemu, neon_flags, packages = TARGETS[target]
    if shutil.which(cc) is None or shutil.which(qemu) is None:
        pytest.skip(f"{cc} or {qemu} not installed (apt-get install {packages})")
    # -O3 as setup.py builds the library
    flags = ["-std=c11", "-O3", "-ffp-contract=off", "-pthread", f"-I{RT}"]
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
    return qemu, exe


def _write_cases(path: Path, cases: list[Conv]) -> None:
    """The runner's --cases format (see runtime/test_runner.c)."""
    with path.open("wb") as f:
        f.write(b"BNNC" + struct.pack("<q", len(cases)))
        for i, conv in enumerate(cases):
            seed = zlib.crc32(str(conv).encode())
            x, _, w = random_inputs(conv, seed)
            rng = np.random.default_rng(seed + 1)
            if i % 2:
                mult = rng.standard_normal(conv.o).astype(np.float32)
                bias = rng.standard_normal(conv.o).astype(np.float32)
            else:
                mult, bias = np.ones(conv.o, np.float32), np.zeros(conv.o, np.float32)
            want = onnx_ops.binary_conv2d_reference(x, w, mult, bias, **conv.attrs())
            head = (conv.n, conv.c, conv.o, conv.h, conv.w, conv.kh, conv.kw, conv.sh, conv.sw)
            head += (conv.dh, conv.dw, conv.top, conv.left, conv.bottom, conv.right)
            head += (conv.group, conv.pad_value)
            f.write(struct.pack("<17q", *head))
            for arr, dt in ((x, "<f4"), (w, "<u4"), (mult, "<f4"), (bias, "<f4"), (want, "<f4")):
                f.write(np.ascontiguousarray(arr, dtype=dt).tobytes())


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_neon_conv_cases_exact_under_qemu(target: str, tmp_path: Path) -> None:
    qemu, exe = _build(target, tmp_path)
    cases = tmp_path / "cases.bin"
    _write_cases(cases, CASES)
    res = subprocess.run(
        [qemu, str(exe), "--cases", str(cases)], capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "variants: portable neon" in res.stdout, res.stdout
    n = len(CASES) * 2 * THREADS  # 2 variants
    assert f"cases: {n} passed, 0 failed" in res.stdout, res.stdout


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_neon_kernel_exact_under_qemu(target: str, tmp_path: Path) -> None:
    qemu, exe = _build(target, tmp_path)
    res = subprocess.run(
        [qemu, str(exe), "250", "4242"], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "variants: portable neon" in res.stdout, res.stdout
    assert "500 passed, 0 failed" in res.stdout, res.stdout
