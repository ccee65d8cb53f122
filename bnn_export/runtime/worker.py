"""The bench worker that runs on a device: ``python -m bnn_export.runtime.worker``.

It loads an .onnx with a local runner (onnxruntime with our custom ops; OpenVINO for the
openvino target), runs the
latency loop and, given ``--inputs FILE.npz`` (array ``x``: float32 NCHW images, optional
``y``: labels), the model's logits on those images. It prints one JSON object on stdout; on
a user error it prints one ``error:`` line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from typing import Any

import numpy as np

from bnn_export import __version__
from bnn_export.bench.latency import LatencySettings, measure_latency
from bnn_export.errors import BnnExportError

EXIT_USER_ERROR = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bnn_export.runtime.worker")
    parser.add_argument("--model", required=True)
    parser.add_argument(
        "--runtime", default="auto", help="auto (by the .onnx target), onnxruntime or openvino"
    )
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("--num-runs", type=int, default=50)
    parser.add_argument("--warmup-runs", type=int, default=1)
    parser.add_argument("--min-secs", type=float, default=1.0)
    parser.add_argument("--inputs", default=None, help=".npz with x (NCHW float32), optional y")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bnn_export.runtime.runners import describe, open_runner

    settings = LatencySettings(args.num_runs, args.warmup_runs, args.min_secs)
    runner = open_runner(args.model, runtime=args.runtime, num_threads=args.num_threads)
    x_all: np.ndarray | None = None
    labels: np.ndarray | None = None
    if args.inputs:
        with np.load(args.inputs, allow_pickle=False) as npz:
            x_all = np.asarray(npz["x"])
            labels = np.asarray(npz["y"]) if "y" in npz.files else None
    if x_all is not None and len(x_all):
        x = x_all[:1]
    else:
        x = np.random.default_rng(0).uniform(-1, 1, (1, *runner.input_shape)).astype(np.float32)
    runner.check_input(x)
    latency = measure_latency(
        lambda: runner.predict_one(x), settings, init_us=runner.init_seconds * 1e6
    )
    result: dict[str, Any] = {
        "tool": "bnn_export.runtime.worker",
        "bnn_export_version": __version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "runtime": describe(runner),
        "latency_us": latency,
    }
    if x_all is not None:
        logits = runner.predict(x_all)
        result["logits"] = logits.astype(float).tolist()
        if labels is not None:
            result["top1"] = float((logits.argmax(1) == labels).mean()) if len(labels) else None
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except (BnnExportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
