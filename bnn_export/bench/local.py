"""Measure one model on this machine with its runtime's Python API (``runtime.runners``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from bnn_export.bench.accuracy import EvalSet
from bnn_export.bench.latency import LatencySettings, measure_latency
from bnn_export.runtime.runners import Runner, describe, open_runner


def latency_input(runner: Runner, eval_set: EvalSet | None) -> np.ndarray:
    """One image for the timing loop: the first test image, or a fixed random one."""
    if eval_set is not None and len(eval_set.x):
        x = eval_set.x[:1]
    else:  # benchmark_model also times random inputs
        x = np.random.default_rng(0).uniform(-1, 1, (1, *runner.input_shape)).astype(np.float32)
    runner.check_input(x)
    return x


def bench_local(
    path: str,
    *,
    runtime: str,
    num_threads: int,
    settings: LatencySettings,
    eval_set: EvalSet | None,
) -> dict[str, Any]:
    """runtime, latency_us and (given an eval set) logits of ``path`` run here."""
    runner = open_runner(path, runtime=runtime, num_threads=num_threads)
    x = latency_input(runner, eval_set)
    latency = measure_latency(
        lambda: runner.predict_one(x), settings, init_us=runner.init_seconds * 1e6
    )
    logits = runner.predict(eval_set.x) if eval_set is not None else None
    return {"runtime": describe(runner), "latency_us": latency, "logits": logits}


def local_logits(path: str, *, runtime: str, eval_set: EvalSet) -> np.ndarray:
    """Logits of ``path`` on the eval set, run here (accuracy of a remotely timed model)."""
    runner = open_runner(path, runtime=runtime, num_threads=1)
    return runner.predict(eval_set.x)
