"""Train every binarizer in both frameworks on digits, convert each run to .tflite (LCE)
and .onnx (onnxruntime target), and print the README's tables from the measured results.

    python benchmarks/conversion_table.py [--epochs 20] [--out DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BINARIZERS = ["none", "ste", "irnet", "siman", "equal_bits", "sdbnn", "gwt"]


def cli(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bnn_export", *args, "--json"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--out", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="bnn-table-"))
    rows = []
    for framework in ("torch", "larq"):
        for b in BINARIZERS:
            run = out / f"{framework}-{b}"
            print(f"{framework}/{b}: training...", file=sys.stderr, flush=True)
            m = cli(
                "train",
                "--framework",
                framework,
                "--binarizer",
                b,
                "--epochs",
                str(args.epochs),
                "-o",
                str(run),
            )
            row: dict[str, Any] = {"framework": framework, "binarizer": b, "train": m}
            for fmt in ("tflite", "onnx"):
                if fmt == "onnx" and framework == "larq":
                    continue
                print(f"{framework}/{b}: converting to {fmt}...", file=sys.stderr, flush=True)
                row[fmt] = cli(
                    "convert", str(run), "--format", fmt, "-o", str(out / f"{framework}-{b}.{fmt}")
                )
            rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    print(f"\nTraining on digits ({args.epochs} epochs, Adam lr 1e-2, batch 64, seed 0):\n")
    print("| binarizer | framework | test accuracy | train time |")
    print("|---|---|---|---|")
    for r in rows:
        t = r["train"]
        acc = f"{t['test_accuracy']:.2%}" if "test_accuracy" in t else t.get("error", "?")
        secs = f"{t['train_seconds']:.0f} s" if "train_seconds" in t else "-"
        print(f"| {r['binarizer']} | {r['framework']} | {acc} | {secs} |")
    print("\nConversion of those runs (validated on the 359 digits test images):\n")
    print(
        "| binarizer | framework | format | binary ops | top-1 agreement | accuracy (artifact / source) | bytes |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        for fmt in ("tflite", "onnx"):
            c = r.get(fmt)
            if c is None:
                continue
            if "error" in c:
                print(
                    f"| {r['binarizer']} | {r['framework']} | {fmt} | error: {c['error']} | | | |"
                )
                continue
            v, f = c["validation"], c["facts"]
            print(
                f"| {r['binarizer']} | {r['framework']} | {fmt} | {f['binary_ops']} {f['binary_op']} "
                f"| {v['agreement']:.2%} | {v['accuracy']:.2%} / {v['reference_accuracy']:.2%} | {c['bytes']:,} |"
            )


if __name__ == "__main__":
    main()
