"""Streaming ``imagefolder:DIR`` training data: DataLoader throughput and memory as the
tree grows.

Writes ImageNet-layout trees of small random JPEGs (10 classes; ``--sizes`` images each,
default 1,000 and 4,000) in a temporary folder, then for each tree and worker count
(``--workers``, default 0 and 2) iterates one epoch of the augmented training split
(random-resized crop + flip to ``--input-size``) in a fresh child process, which reports:

* images/s over the epoch (decode + augment + normalise + batch);
* main-process peak RSS growth: ``ru_maxrss`` less the RSS after imports, before the tree
  is scanned (what the dataset and loading cost the trainer's process);
* worker peak RSS: the largest ``ru_maxrss`` of the DataLoader worker processes.

Only the file list is held in memory, so RSS should stay flat as the tree grows: the
table gives the RSS growth relative to the smallest tree's, and what the decoded
training set would take in memory, for scale.

Run: python -m benchmarks.bench_data [--sizes 1000,4000] [--workers 0,2]
     [--input-size 64] [--batch-size 64] [--json F]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CLASSES = 10


def write_tree(root: Path, images: int, seed: int = 0, size: int = 72) -> None:
    """``images`` random JPEGs (``size`` px, a little varied) in train/, one per class in val/."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size + 8, size + 8, 3), dtype=np.uint8)
    for split, count in (("train", images), ("val", CLASSES)):
        for c in range(CLASSES):
            (root / split / f"class{c:02d}").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            dy, dx = (int(v) for v in rng.integers(0, 8, size=2))
            img = Image.fromarray(base[dy : dy + size, dx : dx + size] // (1 + i % 3))
            img.save(root / split / f"class{i % CLASSES:02d}" / f"img{i:06d}.jpg", quality=90)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def child(root: str, workers: int, input_size: int, batch_size: int) -> dict[str, Any]:
    """One epoch over ``root``'s training split in this process; the measurements."""
    import torch
    from torch.utils.data import DataLoader

    from bnn_export.data_torch import training_data

    torch.set_num_threads(1)
    before = _rss_mb()
    data = training_data(f"imagefolder:{root}", (3, input_size, input_size), seed=0)
    data.train.set_epoch(0)  # type: ignore[attr-defined]
    loader = DataLoader(data.train, batch_size=batch_size, shuffle=True, num_workers=workers)
    seen = 0
    t0 = time.perf_counter()
    for x, _ in loader:
        seen += len(x)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "images": seen,
        "seconds": seconds,
        "images_per_s": seen / seconds,
        "rss_growth_mb": peak - before,
        "worker_peak_rss_mb": workers_peak if workers else None,
    }


def measure(root: Path, workers: int, input_size: int, batch_size: int) -> dict[str, Any]:
    """``child`` in a fresh Python process (its own peak RSS)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_data",
            "--child",
            str(root),
            "--workers",
            str(workers),
            "--input-size",
            str(input_size),
            "--batch-size",
            str(batch_size),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def table(rows: list[dict[str, Any]], input_size: int) -> str:
    """Markdown table; ratios against the smallest tree at the same worker count, and
    for scale the size the decoded training set would take in memory as float32."""
    smallest = min(r["tree"] for r in rows)
    base = {r["workers"]: r for r in rows if r["tree"] == smallest}
    zero = {r["tree"]: r for r in rows if r["workers"] == 0}
    lines = [
        "| tree images | workers | images/s | vs 0 workers | main RSS growth (MB) "
        "| worker peak RSS (MB) | RSS growth vs smallest tree | decoded set would be (MB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ref = base[r["workers"]]["rss_growth_mb"]
        speed = r["images_per_s"] / zero[r["tree"]]["images_per_s"] if r["tree"] in zero else None
        worker = r["worker_peak_rss_mb"]
        lines.append(
            f"| {r['tree']:,} | {r['workers']} | {r['images_per_s']:.0f} | "
            f"{'' if speed is None else f'{speed:.2f}x'} | {r['rss_growth_mb']:.1f} | "
            f"{'' if worker is None else f'{worker:.0f}'} | "
            f"{r['rss_growth_mb'] / ref if ref > 0 else float('nan'):.2f}x | "
            f"{r['tree'] * 3 * input_size**2 * 4 / 2**20:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sizes", default="1000,4000", help="Tree sizes (train images).")
    ap.add_argument("--workers", default="0,2", help="DataLoader worker counts.")
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--json", help="Also write the rows as JSON to this file.")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, int(args.workers), args.input_size, args.batch_size)))
        return
    sizes = [int(v) for v in args.sizes.split(",")]
    worker_counts = [int(v) for v in args.workers.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        for n in sizes:
            root = Path(tmp) / f"tree{n}"
            t0 = time.perf_counter()
            write_tree(root, n)
            print(f"wrote {n:,} images in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
            for w in worker_counts:
                row = {"tree": n, "workers": w} | measure(root, w, args.input_size, args.batch_size)
                print(
                    f"  {n:,} images, {w} workers: {row['images_per_s']:.0f} images/s",
                    file=sys.stderr,
                )
                rows.append(row)
    print(
        f"imagefolder streaming, augmented training split at {args.input_size}x"
        f"{args.input_size}, batch {args.batch_size}, one epoch per row\n"
    )
    print(table(rows, args.input_size))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
