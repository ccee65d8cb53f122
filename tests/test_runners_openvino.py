"""OpenVINO runners must leave the process's signal handling intact.

OpenVINO's CPU plugin gives the calling thread its own signal stack when it first compiles
a model; with one ``openvino.Core`` per runner, destroying runners in creation order left
the main thread on a freed stack, and the next handled signal (SIGCHLD after any torch
``DataLoader`` with workers) killed the process with SIGSEGV: CI's pytest died that way
after tests/test_fuzz_export.py. Runners now share one Core (``openvino_core``).
"""

from __future__ import annotations

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
