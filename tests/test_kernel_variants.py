"""Every native kernel variant this CPU supports, forced one at a time, and ``BNN_KERNEL``.

* ``test_forced_variant_is_bit_exact``: each variant of this architecture's build (x86-64:
  portable, avx2, avx512; ARM: portable, neon) through the ctypes binding *and* the
  onnxruntime op, on every conv of tests/conv_cases.py, both pad values, 1 and 2 threads:
  the integer accumulators must equal the numpy reference exactly, and so must the affine
  epilogue (one multiply, one add: IEEE rounding, the same on every CPU). A variant this
  CPU lacks is skipped with the missing CPU flags named.
* ``BNN_KERNEL`` forces the variant everywhere the library is loaded in a process: the
  ctypes binding, the onnxruntime op library (the same loaded copy of the library) and the
  CLI; an unknown or unsupported value fails with a message naming it and the variants
  available, at the first convolution and when a runner is made.

docs/testing.md explains how to run the whole suite as a machine without AVX-512 would.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnn_export.convert import onnx_ops
from bnn_export.runtime import native
from bnn_export.runtime.onnx_session import onnx_session
from tests.conv_cases import EDGE_CASES, Conv, random_inputs

ROOT = Path(__file__).resolve().parents[1]
AVAILABLE = native.available_kernels()

#: the variants runtime/bnn_core.c builds on this architecture, and the CPU flags
#: (/proc/cpuinfo names) each needs at run time (the variants' `supported()` checks)
if platform.machine() in ("x86_64", "AMD64"):
    BUILT = ("portable", "avx2", "avx512")
elif platform.machine().startswith(("aarch64", "arm")):
    BUILT = ("portable", "neon")
else:
    BUILT = ("portable",)
NEEDS = {
    "portable": (),
    "avx2": ("avx2", "popcnt"),
    "avx512": ("avx512f", "avx512vl", "avx512bw", "avx512_vpopcntdq"),
    "neon": ("asimd",),
}


def _cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return set()
    for line in cpuinfo.read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def _lacks(variant: str) -> str:
    missing = [f for f in NEEDS[variant] if f not in _cpu_flags()]
    why = f"no {', '.join(missing)} in /proc/cpuinfo" if missing else "not in this build"
    return f"this CPU has no {variant} kernel variant ({why}); available: {','.join(AVAILABLE)}"


def _variants() -> list[object]:
    return [
        pytest.param(v, id=v, marks=[] if v in AVAILABLE else [pytest.mark.skip(reason=_lacks(v))])
        for v in BUILT
    ]


def test_available_variants_follow_the_cpu_flags() -> None:
    """Each variant whose CPU flags are present is available (and only those)."""
    flags = _cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags to compare with")
    expected = [v for v in BUILT if all(f in flags for f in NEEDS[v])]
    assert expected == AVAILABLE


def _one_conv_model(
    conv: Conv, w: np.ndarray, m: np.ndarray, b: np.ndarray, t: np.ndarray | None = None
) -> bytes:
    """One BinaryConv2d; with ``t`` also its optional inputs: threshold (an initializer,
    [C] or [0]) and residual (a graph input R)."""
    fused = t is not None
    inputs = ["X", "W", "m", "b", *(["t", "R"] if fused else [])]
    node = onnx_ops.make_binary_conv2d_node(inputs, ["Y"], **conv.attrs())
    arrays = {"W": w, "m": m, "b": b, **({"t": t} if fused else {})}
    graph = helper.make_graph(
        [node],
        "one_fused_binary_conv" if fused else "one_binary_conv",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, conv.c, conv.h, conv.w])]
        + ([helper.make_tensor_value_info("R", TensorProto.FLOAT, [None] * 4)] if fused else []),
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None] * 4)],
        initializer=[numpy_helper.from_array(v, k) for k, v in arrays.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(onnx_ops.DOMAIN, 1)]
    )
    return model.SerializeToString()


def _first_mismatch(got: np.ndarray, want: np.ndarray) -> str:
    if got.shape != want.shape:
        return f"shape {got.shape} != {want.shape}"
    bad = np.argwhere(~((got == want) | (np.isnan(got) & np.isnan(want))))
    if not bad.size:
        return ""
    at = tuple(bad[0])
    return f"{len(bad)} of {got.size} differ, first at {at}: {got[at]} != {want[at]}"


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("pad_value", [0, 1])
@pytest.mark.parametrize("conv", EDGE_CASES, ids=str)
@pytest.mark.parametrize("variant", _variants())
def test_forced_variant_is_bit_exact(variant: str, conv: Conv, pad_value: int, threads: int):
    conv = replace(conv, pad_value=pad_value)
    x, _, w = random_inputs(conv, zlib.crc32(str(conv).encode()))
    acc = onnx_ops.binary_conv2d_accumulate(x, w, **conv.attrs())
    assert np.abs(acc).max() < 2**24  # float32 holds every accumulator exactly
    rng = np.random.default_rng(conv.o)
    m = rng.uniform(-2, 2, conv.o).astype(np.float32)
    b = rng.standard_normal(conv.o).astype(np.float32)
    ones, zeros = np.ones(conv.o, np.float32), np.zeros(conv.o, np.float32)
    affine = onnx_ops.binary_conv2d_reference(x, w, m, b, **conv.attrs())
    session_acc = onnx_session(_one_conv_model(conv, w, ones, zeros), num_threads=threads)
    session_affine = onnx_session(_one_conv_model(conv, w, m, b), num_threads=threads)
    with native.forced_kernel(variant):
        assert native.kernel_name() == variant
        results = {
            "native acc": (
                native.binary_conv2d(x, w, ones, zeros, num_threads=threads, **conv.attrs()),
                acc.astype(np.float32),
            ),
            "native affine": (
                native.binary_conv2d(x, w, m, b, num_threads=threads, **conv.attrs()),
                affine,
            ),
            "onnxruntime acc": (session_acc.run(None, {"X": x})[0], acc.astype(np.float32)),
            "onnxruntime affine": (session_affine.run(None, {"X": x})[0], affine),
            # the op's first run offers 32 tasks; later runs split for the threads it saw
            "onnxruntime affine, 2nd run": (session_affine.run(None, {"X": x})[0], affine),
        }
        assert native.kernel_name() == variant
    for what, (got, want) in results.items():
        assert not _first_mismatch(got, want), f"{variant} {what} {conv}: " + _first_mismatch(
            got, want
        )


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("with_threshold", [True, False])
@pytest.mark.parametrize("conv", EDGE_CASES, ids=str)
@pytest.mark.parametrize("variant", _variants())
def test_forced_variant_fused_threshold_and_residual(
    variant: str, conv: Conv, with_threshold: bool, threads: int
) -> None:
    """The op's optional inputs (RSign's per-channel threshold, a residual shortcut) in
    every variant, ctypes and onnxruntime, bit-exact against the numpy reference; inputs
    equal to their channel's threshold (ties: +1) and just below it are planted."""
    x, _, w = random_inputs(conv, zlib.crc32(str(conv).encode()) + 1)
    rng = np.random.default_rng(conv.c + 7)
    t = rng.uniform(-0.5, 0.5, conv.c).astype(np.float32) if with_threshold else None
    if t is not None:
        x = x.copy()
        x[:, :, 0, 0] = t  # ties: x == t -> +1
        x[:, :, -1, -1] = np.nextafter(t, np.float32(-np.inf))  # just below: -1
    m = rng.uniform(-2, 2, conv.o).astype(np.float32)
    b = rng.standard_normal(conv.o).astype(np.float32)
    want = onnx_ops.binary_conv2d_reference(x, w, m, b, threshold=t, **conv.attrs())
    r = rng.standard_normal(want.shape).astype(np.float32)
    want = onnx_ops.binary_conv2d_reference(x, w, m, b, threshold=t, residual=r, **conv.attrs())
    t_input = t if t is not None else np.zeros(0, np.float32)  # [0]: no threshold
    session = onnx_session(_one_conv_model(conv, w, m, b, t_input), num_threads=threads)
    with native.forced_kernel(variant):
        got = {
            "native": native.binary_conv2d(
                x, w, m, b, num_threads=threads, threshold=t, residual=r, **conv.attrs()
            ),
            "onnxruntime": session.run(None, {"X": x, "R": r})[0],
        }
    for what, y in got.items():
        assert not _first_mismatch(y, want), f"{variant} {what} {conv}: " + _first_mismatch(y, want)


def test_one_session_follows_variant_and_batch_changes() -> None:
    """The op caches its plan (weight panel, geometry tables) per session: a forced
    variant or another batch size between runs must still give exact results (the plan is
    rebuilt for a new variant, reused across batch sizes)."""
    conv = next(c for c in EDGE_CASES if c.o > 1 and c.h > 2)
    x, _, w = random_inputs(conv, 11)
    rng = np.random.default_rng(3)
    m = rng.uniform(-2, 2, conv.o).astype(np.float32)
    b = rng.standard_normal(conv.o).astype(np.float32)
    session = onnx_session(_one_conv_model(conv, w, m, b), num_threads=2)
    xs = [np.concatenate([x, x[::-1] * 0.5 - 0.25])[:n] for n in (len(x), 1, 2 * len(x))]
    for variant in [*AVAILABLE, *reversed(AVAILABLE)]:
        with native.forced_kernel(variant):
            for xb in xs:
                want = onnx_ops.binary_conv2d_reference(xb, w, m, b, **conv.attrs())
                got = session.run(None, {"X": xb})[0]
                assert not _first_mismatch(got, want), f"{variant} n={len(xb)}: " + (
                    _first_mismatch(got, want)
                )


def test_fused_inputs_of_the_wrong_size_are_refused() -> None:
    conv = EDGE_CASES[0]
    x, _, w = random_inputs(conv, 3)
    m, b = np.ones(conv.o, np.float32), np.zeros(conv.o, np.float32)
    session = onnx_session(_one_conv_model(conv, w, m, b, np.zeros(conv.c + 1, np.float32)))
    y = onnx_ops.binary_conv2d_reference(x, w, m, b, **conv.attrs())
    with pytest.raises(Exception, match="threshold must have C"):
        session.run(None, {"X": x, "R": y})
    session = onnx_session(_one_conv_model(conv, w, m, b, np.zeros(0, np.float32)))
    with pytest.raises(Exception, match="residual must have the output's shape"):
        session.run(
            None, {"X": x, "R": np.zeros((y.shape[0], y.shape[1] + 1, *y.shape[2:]), np.float32)}
        )


def test_forced_kernel_restores_the_previous_variant() -> None:
    """After a forced block the process is back on the variant it had (BNN_KERNEL's under
    `make test-avx2`), not on the best one."""
    before = native.kernel_name()
    for variant in AVAILABLE:
        with native.forced_kernel(variant):
            assert native.kernel_name() == variant
        assert native.kernel_name() == before


def test_this_run_uses_the_requested_variant() -> None:
    """The suite runs on BNN_KERNEL's variant when set (conftest.py puts it back after any
    test that forces another), else on the best this CPU has."""
    requested = os.environ.get("BNN_KERNEL") or "auto"
    expected = AVAILABLE[-1] if requested == "auto" else requested
    assert native.kernel_name() == expected


# ------------------------------------------------------------------ BNN_KERNEL


_CHILD = """
import json, sys
import numpy as np
from bnn_export.convert import onnx_ops
from bnn_export.errors import BnnExportError
from bnn_export.runtime import native
from bnn_export.runtime.onnx_session import onnx_session
from bnn_export.runtime.runners import OnnxRuntimeRunner
from tests.conv_cases import EDGE_CASES, random_inputs
from tests.test_kernel_variants import _one_conv_model

conv = EDGE_CASES[8]
x, _, w = random_inputs(conv, 0)
ones, zeros = np.ones(conv.o, np.float32), np.zeros(conv.o, np.float32)
acc = onnx_ops.binary_conv2d_accumulate(x, w, **conv.attrs()).astype(np.float32)
model = _one_conv_model(conv, w, ones, zeros)
out = {}
# the onnxruntime op library first: it loads the kernel library by itself (rpath)
session = onnx_session(model)
try:
    out["ort"] = bool(np.array_equal(session.run(None, {"X": x})[0], acc))
except Exception as exc:
    out["ort"] = str(exc)
try:
    out["kernel"] = native.kernel_name()
except native.KernelError as exc:
    out["kernel"] = "KernelError: " + str(exc)
try:
    got = native.binary_conv2d(x, w, ones, zeros, **conv.attrs())
    out["native"] = bool(np.array_equal(got, acc))
except native.KernelError as exc:
    out["native"] = "KernelError: " + str(exc)
try:
    out["runner"] = OnnxRuntimeRunner(model).info["bnn_kernel"]
except BnnExportError as exc:
    out["runner"] = "BnnExportError: " + str(exc)
out["maps"] = sorted({line.split()[-1] for line in open("/proc/self/maps")
                      if line.rstrip().endswith("libbnn_kernels.so")})
if not isinstance(out["ort"], bool):  # one library state: forcing from Python fixes the op
    native.set_kernel("portable")
    out["ort_after_set_kernel"] = bool(np.array_equal(session.run(None, {"X": x})[0], acc))
print(json.dumps(out))
"""


def _child(value: str) -> dict[str, object]:
    env = {**os.environ, "BNN_KERNEL": value, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, timeout=120
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("variant", _variants())
def test_bnn_kernel_forces_the_variant_everywhere(variant: str) -> None:
    out = _child(variant)
    # one copy of the kernel library in the process, whoever loaded it first: the
    # onnxruntime op and the ctypes binding share its variant state
    assert len(out.pop("maps")) == 1  # type: ignore[arg-type]
    assert out == {"ort": True, "kernel": variant, "native": True, "runner": variant}


def _bad_values() -> list[object]:
    unsupported = [v for v in BUILT if v not in AVAILABLE]
    return [
        pytest.param("bogus", "unknown kernel 'bogus'", id="unknown"),
        pytest.param("AVX2", "unknown kernel 'AVX2'", id="wrong-case"),
        pytest.param(
            "neon" if "neon" not in BUILT else "avx2",
            "unknown kernel",
            id="other-architecture",
        ),
        pytest.param(
            unsupported[0] if unsupported else "",
            "is not supported by this CPU",
            id="unsupported-by-this-cpu",
            marks=[]
            if unsupported
            else [pytest.mark.skip(reason=f"this CPU has every variant ({','.join(AVAILABLE)})")],
        ),
    ]


@pytest.mark.parametrize("value, problem", _bad_values())
def test_bad_bnn_kernel_is_a_clear_error(value: str, problem: str) -> None:
    out = _child(value)
    message = f"BNN_KERNEL: {problem}"
    available = f"(available: {','.join(AVAILABLE)})"
    for where in ("ort", "kernel", "native", "runner"):
        assert message in str(out[where]) and available in str(out[where]), (where, out)
    assert str(out["kernel"]).startswith("KernelError: no kernel variant selected")
    assert "fix: unset BNN_KERNEL or set it to one of: auto, " in str(out["runner"])
    assert out["ort_after_set_kernel"] is True


def test_bench_cli_honours_bnn_kernel(bench_artifacts, tmp_path: Path) -> None:
    """`bnn-export bench` started with BNN_KERNEL records and uses that variant; a bad value
    stops it with the reason."""
    onnx_path = str(bench_artifacts.onnx["onnxruntime"])
    fast = ["--num-runs", "2", "--warmup-runs", "0", "--min-secs", "0", "--quiet"]
    out_json = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "bnn_export", "bench", onnx_path, *fast]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [*cmd, "--json", str(out_json)],
        capture_output=True,
        text=True,
        env={**env, "BNN_KERNEL": "portable"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    row = json.loads(out_json.read_text())["results"][0]
    assert row["runtime"]["info"]["bnn_kernel"] == "portable"
    done = subprocess.run(
        cmd, capture_output=True, text=True, env={**env, "BNN_KERNEL": "bogus"}, timeout=300
    )
    assert done.returncode != 0
    assert "BNN_KERNEL: unknown kernel 'bogus'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_onnx_checker_accepts_the_test_model() -> None:
    conv = EDGE_CASES[1]
    _, _, w = random_inputs(conv, 0)
    ones, zeros = np.ones(conv.o, np.float32), np.zeros(conv.o, np.float32)
    onnx.checker.check_model(onnx.load_from_string(_one_conv_model(conv, w, ones, zeros)))
