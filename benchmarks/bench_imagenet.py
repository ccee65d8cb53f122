"""The literature's BNNs end to end, batch 1: bnn-export's ONNX (BinaryConv2d in
onnxruntime) vs OpenVINO's BinaryConvolution vs the LCE interpreter on x86 vs the float
twin (same architecture, binarizer 'none') in onnxruntime, at 1 and 2 threads.

Latency: median of runs interleaved in blocks in one process (ratios are what to compare;
the LCE interpreter runs x86 reference kernels, so it gets fewer runs). Peak memory: each runtime
loads its file and runs it in a child process of its own (which imports only the runtime),
which reports its peak RSS (VmHWM) less its RSS before loading the model. Models have random weights
with batch norm re-estimated on digits (latency does not depend on the values).

Run: python -m benchmarks.bench_imagenet [--models birealnet18,reactnet-a,quicknet]
     [--input-size 224] [--width 1.0] [--runs 20] [--threads 1,2] [--no-lce] [--json F]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_kernels import blocked_median_ms, interleaved_median_ms, thread_scaling
from bnn_export.binarizers import get
from bnn_export.convert.export_flow import export_graph
from bnn_export.convert.graph import graph_from_torch
from bnn_export.datasets import load_dataset
from bnn_export.models import arch_spec
from bnn_export.models.evaluation import recalibrate_batchnorm
from bnn_export.models.torch_build import build_torch_model
from bnn_export.runtime.native import kernel_name
from bnn_export.runtime.runners import LceRunner, OnnxRuntimeRunner, OpenVinoRunner, Runner

#: (runtime, runner class, file kind in ``artifacts``)
RUNTIMES = {
    "ours": (OnnxRuntimeRunner, "ours.onnx"),
    "openvino": (OpenVinoRunner, "openvino.onnx"),
    "lce": (LceRunner, "model.tflite"),
    "float": (OnnxRuntimeRunner, "float.onnx"),
}


def artifacts(name: str, size: int, width: float, lce: bool) -> dict[str, bytes]:
    """The model's files: ours / openvino / float .onnx and (with ``lce``) .tflite."""
    files: dict[str, bytes] = {}
    for binarizer, targets in (("ste", ["onnxruntime", "openvino"]), ("none", ["reference"])):
        arch = arch_spec(name, input_shape=(3, size, size), width=width, num_classes=1000)
        model = build_torch_model(arch, get(binarizer), seed=0)
        calib = load_dataset("digits").adapted((3, size, size)).x_train[:32]
        recalibrate_batchnorm(model, calib)
        graph = graph_from_torch(model, (3, size, size))
        meta = {"arch": arch}
        for target in targets:
            key = {"onnxruntime": "ours.onnx", "openvino": "openvino.onnx"}.get(
                target, "float.onnx"
            )
            files[key] = export_graph(graph, fmt="onnx", target=target, metadata=meta)[0]
        if lce and binarizer == "ste":
            files["model.tflite"] = export_graph(graph, fmt="tflite", target="lce", metadata=meta)[
                0
            ]
    return files


def open_runner(runtime: str, data: bytes, threads: int) -> Runner:
    cls, _ = RUNTIMES[runtime]
    return cls(data, num_threads=threads)  # type: ignore[call-arg]


#: what each runtime's child imports before its baseline is taken (the library's own
#: footprint is not the model's)
RUNTIME_IMPORTS = {
    "ours": "import onnxruntime",
    "float": "import onnxruntime",
    "openvino": "import openvino",
    "lce": "import larq_compute_engine.tflite.python.interpreter",
}


def peak_memory_mib(runtime: str, path: Path, threads: int) -> float:
    """Peak RSS (MiB) a model adds to a process: a child imports the runtime, notes its RSS,
    loads ``path`` and runs it 5 times, and reports its peak RSS (VmHWM) less that baseline.
    The child imports only the runtime module, not this benchmark (torch would raise the
    high-water mark above anything the model adds)."""
    code = (
        "import sys, numpy as np\n"
        f"{RUNTIME_IMPORTS[runtime]}\n"
        "from bnn_export.runtime.runners import LceRunner, OnnxRuntimeRunner, OpenVinoRunner\n"
        "def status(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key + ':'):\n"
        "            return int(line.split()[1])\n"
        "before = status('VmRSS')\n"
        f"cls = {RUNTIMES[runtime][0].__name__}\n"
        f"r = cls(open({str(path)!r}, 'rb').read(), num_threads={threads})\n"
        "x = np.zeros((1, *r.input_shape), np.float32)\n"
        "[r.predict_one(x) for _ in range(5)]\n"
        "print(status('VmHWM') - before)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=900
    )
    return int(out.stdout.split()[-1]) / 1024


def time_runners(runners: dict[str, Runner], runs: int, lce_runs: int) -> dict[str, float]:
    """Median ms per runtime on one random input: interleaved, LCE apart with fewer runs."""
    x = np.random.default_rng(0).standard_normal((1, *runners["ours"].input_shape))
    x = x.astype(np.float32)
    calls: dict[str, Callable[[], object]] = {
        r: partial(runner.predict_one, x) for r, runner in runners.items()
    }
    lce = calls.pop("lce", None)
    ms = blocked_median_ms(calls, runs)
    if lce is not None:
        ms |= interleaved_median_ms({"lce": lce}, lce_runs, warmup=1)
    return ms


def scaling(
    files: dict[str, bytes], threads: list[int]
) -> dict[str, tuple[float, tuple[float, float]]]:
    """Speed-up from the first to the last thread count, ours and the float twin, as
    ``thread_scaling``'s median of paired block ratios with its quartiles (the per-thread
    tables time the counts minutes apart, which these VMs' drift does not forgive)."""
    out = {}
    for r in ("ours", "float"):
        shape = open_runner(r, files[RUNTIMES[r][1]], 1).input_shape
        x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)

        def make(t: int, r: str = r, x: np.ndarray = x) -> Callable[[], object]:
            return partial(open_runner(r, files[RUNTIMES[r][1]], t).predict_one, x)

        _, ratio, quartiles = thread_scaling(make, (threads[0], threads[-1]), rounds=20)
        out[r] = (ratio, quartiles)
    return out


def op_time_shares(data: bytes, runs: int = 10) -> dict[str, float]:
    """Share of our model's node time per op type (onnxruntime's profiler, 1 thread):
    how much the float layers (stem, depthwise, 1x1 shortcuts) weigh beside BinaryConv2d."""
    import onnxruntime as ort

    from bnn_export.runtime.native import ort_ops_library_path

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    opts.register_custom_ops_library(ort_ops_library_path())
    with tempfile.TemporaryDirectory(prefix="bnn-prof-") as tmp:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp, "prof"))
        session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
        shape = [1, *session.get_inputs()[0].shape[1:]]
        x = np.zeros(shape, np.float32)
        for _ in range(runs):
            session.run(None, {session.get_inputs()[0].name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = {}
    for ev in events:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            op = ev.get("args", {}).get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + float(ev.get("dur", 0))
    whole = sum(totals.values()) or 1.0
    return {op: t / whole for op, t in sorted(totals.items(), key=lambda kv: -kv[1])[:5]}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--models", default="birealnet18,reactnet-a,quicknet")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--lce-runs", type=int, default=3)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--no-lce", action="store_true", help="skip the LCE interpreter (slow on x86)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    ap.add_argument("--json", default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    print(
        f"{cpu_name()}, our kernel variant: {kernel_name()}, batch 1, "
        f"{args.input_size}x{args.input_size}, width {args.width}"
    )
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bnn-bench-") as tmp:
        for name in args.models.split(","):
            files = artifacts(name, args.input_size, args.width, lce=not args.no_lce)
            paths = {}
            for key, data in files.items():
                paths[key] = Path(tmp, f"{name}-{key}")
                paths[key].write_bytes(data)
            runtimes = [r for r in RUNTIMES if RUNTIMES[r][1] in files]
            row: dict[str, Any] = {
                "model": name,
                "bytes": {r: len(files[RUNTIMES[r][1]]) for r in runtimes},
                "ms": {},
                "peak_mib": {},
            }
            for t in threads:
                runners = {r: open_runner(r, files[RUNTIMES[r][1]], t) for r in runtimes}
                ms = time_runners(runners, args.runs, args.lce_runs)
                row["ms"][t] = ms
                if not args.no_memory and t == threads[0]:
                    row["peak_mib"] = {
                        r: peak_memory_mib(r, paths[RUNTIMES[r][1]], t) for r in runtimes
                    }
            if len(threads) > 1:
                row["scaling"] = scaling(files, threads)
            row["op_share"] = op_time_shares(files["ours.onnx"])
            results.append(row)
            _print_row(row, threads)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "cpu": cpu_name(),
                    "kernel": kernel_name(),
                    "args": vars(args),
                    "results": results,
                },
                indent=2,
            )
        )


def _print_row(row: dict[str, Any], threads: list[int]) -> None:
    ms = row["ms"]
    print(f"\n{row['model']}")
    print(
        f"  {'runtime':<10}{'size KiB':>10}"
        + "".join(f"{f'{t} thr ms':>12}" for t in threads)
        + f"{'peak MiB':>10}  ours is faster by"
    )
    for r, size in row["bytes"].items():
        cells = "".join(f"{ms[t].get(r, float('nan')):12.2f}" for t in threads)
        mem = row["peak_mib"].get(r)
        ratio = ms[threads[0]][r] / ms[threads[0]]["ours"]
        print(
            f"  {r:<10}{size / 1024:10.0f}{cells}{(f'{mem:10.0f}' if mem is not None else ' ' * 10)}  "
            + ("-" if r == "ours" else f"{ratio:.2f}x at {threads[0]} thread(s)")
        )
    if "scaling" in row:
        (xo, qo), (xf, qf) = row["scaling"]["ours"], row["scaling"]["float"]
        print(
            f"  {threads[0]} -> {threads[-1]} threads (paired blocks, median ratio [quartiles]): "
            f"ours {xo:.2f}x [{qo[0]:.2f}, {qo[1]:.2f}] (target >= 1.7x), "
            f"float twin {xf:.2f}x [{qf[0]:.2f}, {qf[1]:.2f}]"
        )
    if row.get("op_share"):
        shares = ", ".join(f"{op} {share:.0%}" for op, share in row["op_share"].items())
        print(f"  where ours spends its time (onnxruntime profile, 1 thread): {shares}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
