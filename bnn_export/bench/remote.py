"""Measure one model on a device through ``bnn_export.devices`` (ssh, adb, or local binary).

- .tflite: LCE's ``lce_benchmark_model`` on the device (``run_lce_benchmark``). It times
  random inputs and reports no outputs, so accuracy is measured on this machine with the LCE
  interpreter and marked ``measured_on: "local"``.
- .onnx over ssh: ``python -m bnn_export.runtime.worker`` on the device (bnn-export installed
  there), given the artifact and the eval images as an .npz; latency and logits come back as
  JSON (``run_remote_worker``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bnn_export.bench.accuracy import EvalSet
from bnn_export.bench.latency import LatencySettings
from bnn_export.devices import Device, run_lce_benchmark, run_remote_worker
from bnn_export.errors import BnnExportError

WORKER_MODULE = "bnn_export.runtime.worker"
INPUTS_NAME = "bnn-export-inputs.npz"


def lce_latency(raw: dict[str, Any]) -> dict[str, Any]:
    """lce_benchmark_model's statistics under the names bench uses (p90 is not printed)."""
    keys = (
        "count",
        "min",
        "max",
        "mean",
        "std",
        "p50",
        "p90",
        "p5",
        "p95",
        "first_inference",
        "warmup_mean",
        "init",
    )
    return {key: raw.get(key) for key in keys}


def bench_tflite_on_device(
    device: Device,
    path: str,
    *,
    binary: str,
    num_threads: int,
    settings: LatencySettings,
    timeout: float,
    taskset: str | None,
    emulator: Sequence[str] | None,
) -> dict[str, Any]:
    """runtime, latency_us, device info and emulation flags from lce_benchmark_model."""
    try:
        result = run_lce_benchmark(
            device,
            path,
            binary=binary,
            num_threads=num_threads,
            num_runs=settings.num_runs,
            warmup_runs=settings.warmup_runs,
            min_secs=settings.min_secs,
            timeout=timeout,
            taskset=taskset,
            emulator=emulator,
        )
    except FileNotFoundError as exc:
        raise BnnExportError(str(exc), hint="check --lce-benchmark-binary") from None
    return {
        "runtime": {
            "name": "lce_benchmark_model",
            "version": None,
            "threads": num_threads,
            "binary": binary,
            "command": result["command"],
        },
        "latency_us": lce_latency(result["latency_us"]),
        "device": result["device"],
        "emulated": result["emulated"],
        "emulator": result["emulator"],
        "note": result["note"],
        "logits": None,
    }


def bench_onnx_over_ssh(
    device: Device,
    path: str,
    *,
    runtime: str,
    num_threads: int,
    settings: LatencySettings,
    eval_set: EvalSet | None,
    timeout: float,
    remote_python: str,
    device_info: Callable[[], dict[str, Any]] | None = None,
    emulator: Sequence[str] | None = None,
) -> dict[str, Any]:
    """runtime, latency_us and logits from bnn-export's worker run on the device.

    ``emulator`` prefixes the worker command (e.g. ``qemu-aarch64-static -L ROOTFS`` with
    ``remote_python`` an aarch64 python in ROOTFS); such rows are marked emulated, and their
    latency is not the latency of any ARM CPU.
    """
    name = Path(path).name
    argv = [
        remote_python,
        "-m",
        WORKER_MODULE,
        "--model",
        name,
        "--runtime",
        runtime,
        "--num-threads",
        str(num_threads),
        "--num-runs",
        str(settings.num_runs),
        "--warmup-runs",
        str(settings.warmup_runs),
        "--min-secs",
        f"{settings.min_secs:g}",
    ]
    with tempfile.TemporaryDirectory(prefix="bnn-export-bench-") as local_tmp:
        files = {name: path}
        if eval_set is not None:
            inputs = os.path.join(local_tmp, INPUTS_NAME)
            np.savez(inputs, x=eval_set.x, y=eval_set.y)
            files[INPUTS_NAME] = inputs
            argv += ["--inputs", INPUTS_NAME]
        info = device_info() if device_info is not None else device.info()
        result = run_remote_worker(device, files, argv, timeout, emulator=emulator)
    logits = result.get("logits")
    return {
        "runtime": {
            **result["runtime"],
            "worker": WORKER_MODULE,
            "python": result.get("python"),
            "remote_bnn_export": result.get("bnn_export_version"),
            "machine": result.get("machine"),
        },
        "latency_us": result["latency_us"],
        "device": info,
        "emulated": result["emulated"],
        "emulator": list(emulator) if emulator else None,
        "note": result.get("note"),
        "logits": np.asarray(logits, dtype=np.float32) if logits is not None else None,
    }
