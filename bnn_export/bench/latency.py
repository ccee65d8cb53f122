"""The timing loop: warm-up runs, then timed runs until both a count and a time are reached.

Statistics are in microseconds and follow TFLite's ``benchmark_model``: the first inference
and the warm-up are reported apart from the timed runs, and so is the runtime's init time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

# Stop the timed runs after this long even if num_runs is not reached (benchmark_model's
# --max_secs default).
DEFAULT_MAX_SECS = 150.0


@dataclass(frozen=True)
class LatencySettings:
    num_runs: int = 50
    warmup_runs: int = 1
    min_secs: float = 1.0
    max_secs: float = DEFAULT_MAX_SECS

    def __post_init__(self) -> None:
        for name, value, low in (
            ("num_runs", self.num_runs, 1),
            ("warmup_runs", self.warmup_runs, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"Expected `{name}` to be an integer >= {low}, but got {value!r}")
        for name, secs in (("min_secs", self.min_secs), ("max_secs", self.max_secs)):
            if not (isinstance(secs, int | float) and math.isfinite(secs) and secs >= 0):
                raise ValueError(f"Expected `{name}` to be a number >= 0, but got {secs!r}")


def percentile(sorted_us: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation (numpy's default), of sorted values."""
    return float(np.percentile(np.asarray(sorted_us, dtype=np.float64), q * 100.0))


def summarize(times_us: list[float]) -> dict[str, float | int]:
    """count, min, max, mean, std (population), p50, p90 of timed runs in microseconds."""
    if not times_us:
        raise ValueError("Expected at least one timed run, but got none")
    ordered = sorted(times_us)
    values = np.asarray(times_us, dtype=np.float64)
    return {
        "count": len(times_us),
        "min": ordered[0],
        "max": ordered[-1],
        "mean": float(values.mean()),
        "std": float(values.std()),
        "p50": percentile(ordered, 0.5),
        "p90": percentile(ordered, 0.9),
    }


def measure_latency(
    run_once: Callable[[], Any],
    settings: LatencySettings,
    *,
    init_us: float | None = None,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> dict[str, Any]:
    """Time ``run_once``: first inference, warm-up runs, then the timed runs.

    The first call is the first inference (reported alone, like benchmark_model's "First
    inference"); it also counts as the first warm-up run. Timed runs continue until there are
    ``num_runs`` of them and ``min_secs`` have passed, or ``max_secs`` have passed.
    """

    def timed() -> float:
        start = clock()
        run_once()
        return (clock() - start) / 1000.0

    first = timed()
    warmup = [first] + [timed() for _ in range(max(0, settings.warmup_runs - 1))]
    runs: list[float] = []
    start = time.monotonic()
    while True:
        runs.append(timed())
        elapsed = time.monotonic() - start
        if len(runs) >= settings.num_runs and elapsed >= settings.min_secs:
            break
        if elapsed >= settings.max_secs:
            break
    stats: dict[str, Any] = summarize(runs)
    stats["first_inference"] = first
    stats["warmup_mean"] = float(np.mean(warmup)) if settings.warmup_runs else None
    stats["init"] = init_us
    stats["timed_seconds"] = time.monotonic() - start
    return stats
