"""Bench reports: JSON (schema ``bnn-export-bench`` v1), a markdown table, a PNG plot.

The table follows LCE's README (model zoo / benchmark tables): one row per model and runtime,
one latency column per device and thread count, with the device, the threads and the unit in
the column header. The unit is always µs, the unit of the JSON's ``latency_us`` (never chosen
by the figures: a report must not read differently on a faster machine). Emulated runs (qemu)
get their own column headed "emulated, not ARM latency", and hollow markers in the plot.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bnn_export import __version__

SCHEMA = "bnn-export-bench"
SCHEMA_VERSION = 1
REPORT_FILES = ("bench.json", "bench.md", "bench.png")


def git_commit() -> str | None:
    """The commit of the bnn-export source tree, when it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = done.stdout.strip()
    if done.returncode != 0 or len(commit) != 40:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=here,
        capture_output=True,
        text=True,
        timeout=10,
    )
    return commit + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def build_info() -> dict[str, Any]:
    import platform

    return {
        "bnn_export_version": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
    }


def make_report(results: Sequence[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "build": build_info(),
        "settings": settings,
        "results": list(results),
    }


# ---------------------------------------------------------------- table


def device_label(row: dict[str, Any]) -> str:
    device = row["device"]
    where = device.get("target") or device.get("transport")
    cpu = device.get("cpu") or device.get("arch") or "unknown CPU"
    label = f"{where} ({cpu})" if where != "local" else f"local {cpu}"
    if device.get("emulated"):
        label += " — emulated, not ARM latency"
    return label


def _column(row: dict[str, Any]) -> tuple[str, int]:
    return device_label(row), int(row["runtime"]["threads"])


#: The table's latency unit: fixed (the JSON's ``latency_us``), so that tables from a fast
#: and a slow machine read alike and nothing in the report follows the machine's speed.
LATENCY_UNIT = "µs"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _count(value: int | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.3g}{unit}"
    return str(value)


def markdown_table(report: dict[str, Any]) -> str:
    results = report["results"]
    if not results:
        return "(no results)"
    columns: list[tuple[str, int]] = []
    for row in results:
        if _column(row) not in columns:
            columns.append(_column(row))
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for row in results:
        key = (row["model"]["name"], row["runtime"]["name"])
        entry = rows.setdefault(key, {"row": row, "latency": {}})
        entry["latency"][_column(row)] = row["latency_us"].get("p50") or row["latency_us"]["mean"]
    headers = [
        "Model",
        "Format",
        "Runtime",
        "Top-1 accuracy",
        "Agreement with reference",
        "1-bit MACs",
        "Float MACs",
        "Size (KiB)",
    ]
    for label, threads in columns:
        headers.append(
            f"{label}, {threads} thread{'s' if threads != 1 else ''}: latency ({LATENCY_UNIT}, p50)"
        )
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for (name, runtime), entry in rows.items():
        row = entry["row"]
        acc = row.get("accuracy") or {}
        top1 = _percent(acc.get("top1"))
        if acc.get("measured_on") == "local" and acc.get("top1") is not None:
            top1 += " (local)"
        cells = [
            f"`{name}`",
            row["model"]["format"],
            runtime,
            top1,
            _percent(acc.get("agreement")),
            _count(row["model"].get("binary_macs")),
            _count(row["model"].get("float_macs")),
            f"{row['model']['bytes'] / 1024:.1f}",
        ]
        for column in columns:
            value = entry["latency"].get(column)
            cells.append("-" if value is None else f"{value:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- plot


def plot_png(report: dict[str, Any]) -> bytes:
    """Top-1 accuracy vs p50 latency, one point per model/device; emulated points hollow."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    fig = Figure(figsize=(7.5, 5))
    ax = fig.add_subplot()
    plotted = 0
    for row in report["results"]:
        top1 = (row.get("accuracy") or {}).get("top1")
        latency = row["latency_us"].get("p50") or row["latency_us"]["mean"]
        if top1 is None or latency is None:
            continue
        emulated = bool(row["device"].get("emulated"))
        label = f"{row['model']['name']} · {row['runtime']['name']} · {device_label(row)}"
        ax.scatter(
            [latency],
            [top1 * 100],
            s=60,
            label=label,
            facecolors="none" if emulated else None,
            edgecolors="C3" if emulated else None,
        )
        plotted += 1
    if not plotted:
        ax.text(
            0.5, 0.5, "no accuracy measured (pass --dataset)", ha="center", transform=ax.transAxes
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("p50 latency per image (µs, log scale)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(
        "bnn-export bench: accuracy vs latency (hollow = emulated, not ARM latency)", fontsize=9
    )
    ax.grid(True, which="both", alpha=0.3)
    if plotted:
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()
