"""``bnn-export sweep``: accuracy against bit ratio, over binarizers.

A binarizer that takes a bit ratio in training (equal_bits) is trained once per ratio;
any other binarizer is trained once and its bits are re-derived at each ratio by
optimal-transport fixing. Every row also reports the accuracy after fixing at the row's
ratio, which for equal_bits must equal the trained accuracy.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bnn_export.binarizers import BinarizerConfig
from bnn_export.binarizers import get as get_binarizer
from bnn_export.bitratio import fix_bit_ratios
from bnn_export.datasets import Dataset
from bnn_export.fileio import atomic_dir, write_json, write_text
from bnn_export.models.torch_build import build_torch_model
from bnn_export.train_torch import TrainSettings, accuracy, recalibrate_batchnorm, train


def run_sweep(
    *,
    arch: dict[str, Any],
    data: Dataset,
    binarizers: list[BinarizerConfig],
    ratios: list[float],
    granularity: str,
    settings: TrainSettings,
    progress: bool = True,
) -> list[dict[str, Any]]:
    data = data.adapted(tuple(arch["kwargs"]["input_shape"]))
    quiet = TrainSettings(**{**settings.__dict__, "progress": False})
    jobs: list[tuple[BinarizerConfig, float | None]] = []
    for b in binarizers:
        if "bit_ratio" in b.info.defaults:
            jobs += [(b, p) for p in ratios]
        else:
            jobs.append((b, None))
    rows: list[dict[str, Any]] = []
    for b, p in tqdm(jobs, desc="sweep", unit="run", disable=not progress):
        config = get_binarizer(b, bit_ratio=p, granularity=granularity) if p is not None else b
        model = build_torch_model(arch, config, seed=settings.seed)
        history = train(model, data, quiet)
        trained_acc = accuracy(model, data.x_test, data.y_test)
        for ratio in [p] if p is not None else ratios:
            fixed = copy.deepcopy(model)
            report = fix_bit_ratios(fixed, ratio, granularity)
            fixed_acc = accuracy(fixed, data.x_test, data.y_test)
            recalibrate_batchnorm(fixed, data.x_train)
            rows.append(
                {
                    "binarizer": b.name,
                    "bit_ratio": ratio,
                    "trained_at_ratio": p is not None,
                    "trained_accuracy": trained_acc,
                    "fixed_accuracy": fixed_acc,
                    "fixed_recalibrated_accuracy": accuracy(fixed, data.x_test, data.y_test),
                    "achieved_ratio": {k: v.achieved_mean for k, v in report.items()},
                    "train_seconds": sum(h["seconds"] for h in history),
                }
            )
    return rows


def markdown_table(rows: list[dict[str, Any]], title: str) -> str:
    lines = [
        f"### {title}",
        "",
        "| binarizer | bit ratio p | trained at p | test accuracy (trained) "
        "| OT-fixed at p | OT-fixed at p + BN re-estimated |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        trained = (
            f"{r['trained_accuracy']:.2%}"
            if r["trained_at_ratio"]
            else f"({r['trained_accuracy']:.2%} unfixed)"
        )
        lines.append(
            f"| {r['binarizer']} | {r['bit_ratio']:.2f} | {'yes' if r['trained_at_ratio'] else 'no'} "
            f"| {trained} | {r['fixed_accuracy']:.2%} | {r['fixed_recalibrated_accuracy']:.2%} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name in dict.fromkeys(r["binarizer"] for r in rows):
        pts = sorted(
            (r["bit_ratio"], max(r["fixed_accuracy"], r["fixed_recalibrated_accuracy"]))
            for r in rows
            if r["binarizer"] == name
        )
        ax.plot([p for p, _ in pts], [a * 100 for _, a in pts], marker="o", label=name)
    ax.set_xlabel("ratio of +1 weights p")
    ax.set_ylabel("test accuracy (%), best of raw / BN re-estimated")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_sweep(
    rows: list[dict[str, Any]], output: str | Path, title: str, meta: dict[str, Any]
) -> None:
    with atomic_dir(output) as tmp:
        write_json(tmp / "sweep.json", {"meta": meta, "rows": rows})
        write_text(tmp / "sweep.md", markdown_table(rows, title))
        plot(rows, tmp / "sweep.png", title)
