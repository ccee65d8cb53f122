"""OpenVINO runners must leave the process's signal handling intact.

OpenVINO's CPU plugin gives the calling thread its own signal stack when it first compiles
a model; with one ``openvino.Core`` per runner, destroying runners in creation order left
the main thread on a freed stack, and the next handled signal (SIGCHLD after any torch
``DataLoader`` with workers) killed the process with SIGSEGV: CI's pytest died that way
after tests/test_fuzz_export.py. Runners now share one Core (``openvino_core``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("openvino")

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import ctypes, gc, signal, subprocess, sys
    sys.path.insert(0, sys.argv[1])
    import faulthandler
    faulthandler.enable()  # as pytest does: the main thread gets a signal stack
    from tests.fuzz_models import build_model, input_shape
    from tests.test_fuzz_export import REGRESSIONS
    from bnn_export.convert.graph import graph_from_torch
    from bnn_export.convert.onnx_export import to_onnx
    from bnn_export.runtime.runners import OpenVinoRunner

    class StackT(ctypes.Structure):
        _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]

    def signal_stack_is_mapped() -> bool:
        st = StackT()
        assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(st)) == 0
        if not st.sp:
            return True  # no signal stack: handlers run on the thread's own stack
        for line in open("/proc/self/maps"):
            lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
            if lo <= st.sp and st.sp + st.size <= hi:
                return True
        return False

    spec = REGRESSIONS[0]
    graph = graph_from_torch(build_model(spec), input_shape(spec))
    data = to_onnx(graph, target="openvino").SerializeToString()
    first, second = OpenVinoRunner(data), OpenVinoRunner(data)
    del first  # destroyed in creation order, not LIFO
    gc.collect()
    del second
    gc.collect()
    print("signal stack mapped:", signal_stack_is_mapped(), flush=True)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # what torch's DataLoader installs
    for _ in range(3):
        subprocess.run(["true"], check=True)
    print("survived", flush=True)
    """
)


def test_runners_destroyed_in_any_order_keep_signal_delivery_working() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert "signal stack mapped: True" in proc.stdout
    assert "survived" in proc.stdout


def test_runners_share_one_core() -> None:
    from bnn_export.runtime.runners import openvino_core

    assert openvino_core() is openvino_core()


ISA_CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from tests.fuzz_models import build_model, input_shape
    from tests.test_fuzz_export import REGRESSIONS
    from bnn_export.convert.graph import graph_from_torch
    from bnn_export.convert.onnx_export import openvino_float_layers, to_onnx
    from bnn_export.runtime.runners import OpenVinoRunner, openvino_runtime_kernels

    for spec in REGRESSIONS:  # the first with a layer OpenVINO runs as BinaryConvolution
        graph = graph_from_torch(build_model(spec), input_shape(spec))
        if len(openvino_float_layers(graph)) < len(graph.binary_nodes()):
            break
    runner = OpenVinoRunner(to_onnx(graph, target="openvino").SerializeToString())
    for layer, kernel in openvino_runtime_kernels(runner.compiled):
        if layer in ("BinaryConvolution", "FakeQuantize", "Convolution"):
            print(layer, kernel)
    """
)


def test_onednn_isa_cap_also_caps_openvinos_own_kernels() -> None:
    """``ONEDNN_MAX_CPU_ISA=AVX2`` alone left OpenVINO's own kernels (FakeQuantize,
    BinaryConvolution) on AVX-512 while oneDNN's ran AVX2: `make test-avx2` and the AVX2
    benchmark timed OpenVINO's AVX-512 binary convolution, and mixed 8/16-channel layouts
    failed to compile. ``openvino_core`` sets ``OV_CPU_MAX_ISA`` to the same cap."""
    env = {k: v for k, v in os.environ.items() if k != "OV_CPU_MAX_ISA"}
    env["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    proc = subprocess.run(
        [sys.executable, "-c", ISA_CHILD, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, (proc.stdout, proc.stderr[-2000:])
    kernels = proc.stdout.split()
    assert "BinaryConvolution" in kernels and "FakeQuantize" in kernels, proc.stdout
    assert not [k for k in kernels if "avx512" in k], proc.stdout
