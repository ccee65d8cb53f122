"""Native kernels vs the numpy reference: exact integer accumulations, every CPU variant.

tests/test_kernel_variants.py forces each variant on every conv case, both pad values and
1-2 threads, and covers BNN_KERNEL."""

from __future__ import annotations

import platform
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from bnn_export.convert import onnx_ops
from bnn_export.runtime import native
from tests.conv_cases import EDGE_CASES, Conv, convs, random_inputs

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = native.available_kernels()


def test_expected_variants_built() -> None:
    """A CPU with SIMD support must get its SIMD variant, not only the portable one."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if platform.machine() == "x86_64" and " avx2" in flags:
        assert "avx2" in VARIANTS
    if platform.machine() == "x86_64" and " avx512_vpopcntdq" in flags and " avx512vl" in flags:
        assert "avx512" in VARIANTS
    if platform.machine() == "aarch64":
        assert "neon" in VARIANTS


def _check(conv: Conv, variant: str, seed: int, affine: bool = False, num_threads: int = 1) -> None:
    x, _, w = random_inputs(conv, seed)
    rng = np.random.default_rng(seed + 1)
    if affine:
        mult = rng.standard_normal(conv.o).astype(np.float32)
        bias = rng.standard_normal(conv.o).astype(np.float32)
    else:
        mult, bias = np.ones(conv.o, np.float32), np.zeros(conv.o, np.float32)
    want = onnx_ops.binary_conv2d_reference(x, w, mult, bias, **conv.attrs())
    with native.forced_kernel(variant):
        assert native.kernel_name() == variant
        got = native.binary_conv2d(x, w, mult, bias, num_threads=num_threads, **conv.attrs())
    assert got.shape == want.shape, str(conv)
    mismatch = np.argwhere(got != want)
    assert mismatch.size == 0, f"{variant} {conv}: first mismatch at {mismatch[0].tolist()}"


def test_variants_detected() -> None:
    assert "portable" in VARIANTS
    native.set_kernel("auto")  # conftest.py puts BNN_KERNEL's variant back afterwards
    assert native.kernel_name() == VARIANTS[-1]  # auto picks the best


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("conv", EDGE_CASES, ids=str)
def test_edge_cases_exact(variant: str, conv: Conv) -> None:
    _check(conv, variant, seed=zlib.crc32(str(conv).encode()))


@pytest.mark.parametrize("variant", VARIANTS)
@settings(
    max_examples=40, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(conv=convs())
def test_random_convs_exact(variant: str, conv: Conv) -> None:
    _check(conv, variant, seed=7)


@pytest.mark.parametrize("variant", VARIANTS)
def test_multiplier_bias_applied(variant: str) -> None:
    for conv in EDGE_CASES[:6]:
        _check(conv, variant, seed=3, affine=True)


def test_threads_match_single_thread() -> None:
    for conv in (EDGE_CASES[4], EDGE_CASES[8], EDGE_CASES[12]):
        _check(conv, VARIANTS[-1], seed=11, num_threads=2)
        _check(conv, VARIANTS[-1], seed=11, num_threads=5)


def test_pack_weights_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    for cg in (1, 31, 32, 33, 100):
        w = rng.choice(np.array([-1, 1], np.int8), size=(5, cg, 3, 2))
        np.testing.assert_array_equal(native.pack_weights(w), onnx_ops.pack_conv_weights(w))


def test_garbage_padding_bits_ignored() -> None:
    conv = EDGE_CASES[2]  # 31 channels: bit 31 of every word is padding
    x, _, w = random_inputs(conv, 5)
    ones, zeros = np.ones(conv.o, np.float32), np.zeros(conv.o, np.float32)
    want = native.binary_conv2d(x, w, ones, zeros, **conv.attrs())
    dirty = w | np.uint32(1 << 31)
    for variant in VARIANTS:
        with native.forced_kernel(variant):
            got = native.binary_conv2d(x, dirty, ones, zeros, **conv.attrs())
        np.testing.assert_array_equal(got, want)


def test_invalid_arguments_raise() -> None:
    conv = EDGE_CASES[1]
    x, _, w = random_inputs(conv, 0)
    ones, zeros = np.ones(conv.o, np.float32), np.zeros(conv.o, np.float32)
    with pytest.raises(native.KernelError, match="pad_value"):
        native.binary_conv2d(x, w, ones, zeros, **{**conv.attrs(), "pad_value": 2})
    with pytest.raises(native.KernelError, match="larger than padded input"):
        native.binary_conv2d(
            x[:, :, :1, :1], w, ones, zeros, **{**conv.attrs(), "pads": (0, 0, 0, 0)}
        )
    with pytest.raises(ValueError, match="channels_in"):
        native.binary_conv2d(x, w, ones, zeros, **{**conv.attrs(), "channels_in": 4})
    with pytest.raises(native.KernelError, match="unknown kernel"):
        native.set_kernel("sse9")


def test_missing_library_error_names_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BNN_LIB_DIR", str(tmp_path))
    with pytest.raises(native.NativeLibraryError, match="make setup"):
        native._lib.__wrapped__()
    with pytest.raises(native.NativeLibraryError, match="fetch_ort_headers.sh"):
        native.ort_ops_library_path()


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) installed")
def test_c_test_runner_native(tmp_path: Path) -> None:
    """The C exactness runner (naive C conv as oracle) on this CPU's variants."""
    rt = ROOT / "runtime"
    exe = tmp_path / "test_runner"
    srcs = [rt / "test_runner.c", rt / "bnn_core.c"]
    extra: list[str] = []
    objs = []
    if "avx512" in VARIANTS or "avx2" in VARIANTS:
        for name, flags in (
            ("bnn_avx2.c", ["-mavx2", "-mpopcnt"]),
            ("bnn_avx512.c", ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512vpopcntdq"]),
        ):
            obj = tmp_path / (name + ".o")
            subprocess.run(
                [
                    "cc",
                    "-std=c11",
                    "-O2",
                    "-ffp-contract=off",
                    *flags,
                    "-c",
                    str(rt / name),
                    "-o",
                    str(obj),
                ],
                check=True,
            )
            objs.append(str(obj))
    subprocess.run(
        [
            "cc",
            "-std=c11",
            "-O2",
            "-ffp-contract=off",
            *extra,
            f"-I{rt}",
            *map(str, srcs),
            *objs,
            "-o",
            str(exe),
            "-lpthread",
            "-lm",
        ],
        check=True,
    )
    res = subprocess.run([str(exe), "300", "12345"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert " 0 failed" in res.stdout


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) installed")
def test_standalone_bench_binary(tmp_path: Path) -> None:
    """runtime/bench_main.c (the device benchmark binary) builds and runs every variant."""
    exe = tmp_path / "bnn_bench"
    subprocess.run(
        [
            "cc",
            "-std=c11",
            "-O2",
            f"-I{ROOT / 'runtime'}",
            str(ROOT / "runtime" / "bench_main.c"),
            str(native.lib_dir() / native.KERNEL_LIB),
            f"-Wl,-rpath,{native.lib_dir()}",
            "-o",
            str(exe),
            "-lpthread",
        ],
        check=True,
    )
    for variant in VARIANTS:
        for threads in (1, 3):
            res = subprocess.run(
                [str(exe), "--c", "33", "--o", "17", "--hw", "6", "--runs", "3"]
                + ["--kernel", variant, "--threads", str(threads)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert res.returncode == 0, res.stderr
            assert res.stdout.startswith(
                f"kernel={variant} layers=4 c=33 o=17 hw=6 k=3 threads={threads}"
            ), res.stdout
            assert "median_ms=" in res.stdout and "plan=cached" in res.stdout
            # the timed (planned, pooled) stack equals a 1-thread bnn_conv2d run bit for bit
            assert "check=ok" in res.stdout, res.stdout
            assert ("pool=persistent" in res.stdout) == (threads > 1), res.stdout
    res = subprocess.run([str(exe), "--kernel", "bogus"], capture_output=True, text=True)
    assert res.returncode == 2 and "unknown kernel 'bogus'" in res.stderr
