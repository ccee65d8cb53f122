"""Training throughput of the PyTorch trainer on this CPU (images/s).

Every number comes from ``bnn_export.train_torch.train`` itself (the function
``bnn-export train`` calls), run on synthetic tensors: seeded random float32 images of
the model's input shape with random labels, held in memory as an ``ArrayDataset``
without augmentation, i.e. the same in-memory batch path the digits set takes. Each
"epoch" is ``--steps-per-epoch`` optimizer steps of ``--batch-size`` images; the first
epoch of a run is warm-up and dropped, the rest give images/s (the trainer's own
per-epoch ``images_per_second``: training images over the epoch's seconds, which include
evaluating a test set of 8 images). The median over epochs and rounds is reported.

Three parts:

* binarizers: ResNet-20 at 3x32x32, float (``none``) and every weight binarizer, same
  batch; interleaved, ``--rounds`` rounds of every binarizer in turn, so a change of
  machine load hits all of them alike. Target: <= 1.5x float's step time for every
  binarizer except equal_bits, whose optimal-transport step sorts every output channel's
  weights on every forward pass (a sort per channel per step; reported, no target).
* data parallel: the same ResNet-20 (``--ddp-binarizer``, default ste) with one process
  and with two DDP processes (gloo, CPU, ``torch.multiprocessing`` running the project's
  trainer with ``bnn_export.distributed.process_group``), the same global batch, one
  intra-op thread per process (so two processes use two cores, one process one core).
  Target: 2 processes >= 1.6x one.
* data loading: a generated ``imagefolder`` tree (``benchmarks.bench_data.write_tree``:
  72 px JPEGs) read by the training DataLoader (decode + random-resized crop + flip to
  ``--data-input-size``) with 0 and 2 workers, each in a fresh process
  (``benchmarks.bench_data.measure``), against the trainer's consumption at that input
  size (``--data-model`` on synthetic tensors), and the trainer reading the tree itself
  (``--workers 2``, the loader processes sharing the cores with training). Loading keeps
  up when the loader alone delivers more images/s than the trainer consumes.

Run: python -m benchmarks.bench_train [--batch-size 128] [--rounds 2] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BINARIZERS = ("none", "ste", "irnet", "siman", "equal_bits", "sdbnn", "gwt")
#: binarizers whose step sorts weights (optimal transport): no overhead target
SORTING = ("equal_bits",)
BINARIZER_TARGET = 1.5
DDP_TARGET = 1.6
TEST_IMAGES = 8


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (else what platform says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def synthetic(shape: tuple[int, int, int], images: int, classes: int, seed: int) -> Any:
    """TrainingData of seeded random images and labels (in memory, no augmentation)."""
    from bnn_export.data_torch import ArrayDataset, TrainingData

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((images + TEST_IMAGES, *shape), dtype=np.float32)
    y = rng.integers(0, classes, images + TEST_IMAGES)
    return TrainingData(
        spec="synthetic",
        train=ArrayDataset(x[:images], y[:images], input_shape=shape),
        test=ArrayDataset(x[images:], y[images:], input_shape=shape),
        num_classes=classes,
        input_shape=shape,
        preprocessing={},
    )


def build(model: str, binarizer: str, shape: tuple[int, int, int], width: float | None) -> Any:
    from bnn_export import binarizers
    from bnn_export.models import arch_spec
    from bnn_export.models.torch_build import build_torch_model

    arch = arch_spec(model, num_classes=10, input_shape=shape, width=width)
    return build_torch_model(arch, binarizers.get(binarizer), seed=0)


def trainer_rates(
    model: Any,
    data: Any,
    *,
    batch_size: int,
    epochs: int,
    threads: int | None,
    workers: int | None = None,
    dist_info: Any = None,
    sync_bn: bool | None = None,
) -> list[float]:
    """``train`` for ``epochs`` epochs; the images/s of every epoch after the first (on
    rank 0; other ranks return [])."""
    from bnn_export.train_torch import TrainSettings, train

    rates: list[float] = []
    settings = TrainSettings(
        epochs=epochs,
        batch_size=batch_size,
        lr=1e-3,
        progress=False,
        num_threads=threads,
        device="cpu",
        workers=workers,
        sync_bn=sync_bn,
    )

    def hook(record: dict[str, float], _state: Any) -> None:
        rates.append(float(record["images_per_second"]))

    train(model, data, settings, on_epoch_end=hook, dist_info=dist_info)
    return rates[1:]


# --- binarizers -------------------------------------------------------------------------


def bench_binarizers(args: argparse.Namespace) -> list[dict[str, Any]]:
    shape = (3, 32, 32)
    data = synthetic(shape, args.batch_size * args.steps_per_epoch, 10, seed=0)
    rates: dict[str, list[float]] = {b: [] for b in BINARIZERS}
    for r in range(args.rounds):
        order = BINARIZERS if r % 2 == 0 else tuple(reversed(BINARIZERS))
        for b in order:
            got = trainer_rates(
                build("resnet20", b, shape, None),
                data,
                batch_size=args.batch_size,
                epochs=1 + args.epochs,
                threads=args.threads,
            )
            rates[b] += got
            print(
                f"  round {r + 1}: {b}: " + ", ".join(f"{v:.0f}" for v in got) + " images/s",
                file=sys.stderr,
            )
    float_rate = statistics.median(rates["none"])
    rows = []
    for b in BINARIZERS:
        rate = statistics.median(rates[b])
        overhead = float_rate / rate
        target = None if b in ("none", *SORTING) else BINARIZER_TARGET
        rows.append(
            {
                "binarizer": b,
                "images_per_s": rate,
                "samples": rates[b],
                "overhead_vs_float": overhead,
                "target": target,
                "met": None if target is None else overhead <= target,
            }
        )
    return rows


# --- data parallel ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    import torch

    from bnn_export import distributed as dd

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    info = dd.DistInfo(rank=rank, world_size=world, local_rank=rank)
    shape = (3, 32, 32)
    data = synthetic(shape, args.batch_size * args.steps_per_epoch, 10, seed=0)
    model = build("resnet20", args.ddp_binarizer, shape, None)
    with dd.process_group(info, torch.device("cpu")):
        rates = trainer_rates(
            model,
            data,
            batch_size=args.batch_size,
            epochs=1 + args.epochs,
            threads=1,
            dist_info=info,
            sync_bn=args.sync_bn,
        )
    if rank == 0:
        Path(out).write_text(json.dumps(rates))


def ddp_rates(world: int, args: argparse.Namespace) -> list[float]:
    """Images/s of ``world`` processes (rank 0's per-epoch global images/s)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        out = str(Path(tmp) / "rates.json")
        mp.spawn(_ddp_worker, args=(world, _free_port(), args, out), nprocs=world, join=True)
        return [float(v) for v in json.loads(Path(out).read_text())]


def bench_ddp(args: argparse.Namespace) -> list[dict[str, Any]]:
    """1 vs 2 processes, with synchronized batch norm (the trainer's default) and, unless
    --ddp-no-sync-bn picks that one alone, without it (plain DDP, torch's own default)."""
    out = []
    for sync_bn in (False,) if args.ddp_no_sync_bn else (True, False):
        args.sync_bn = sync_bn
        rates: dict[int, list[float]] = {1: [], 2: []}
        for r in range(args.rounds):
            for world in (1, 2) if r % 2 == 0 else (2, 1):
                got = ddp_rates(world, args)
                rates[world] += got
                print(
                    f"  sync_bn={sync_bn} round {r + 1}: {world} process(es): "
                    + ", ".join(f"{v:.0f}" for v in got)
                    + " images/s",
                    file=sys.stderr,
                )
        one, two = statistics.median(rates[1]), statistics.median(rates[2])
        out.append(
            {
                "binarizer": args.ddp_binarizer,
                "sync_bn": sync_bn,
                "global_batch": args.batch_size,
                "images_per_s": {"1": one, "2": two},
                "samples": {"1": rates[1], "2": rates[2]},
                "scaling": two / one,
                "target": DDP_TARGET,
                "met": two / one >= DDP_TARGET,
            }
        )
    return out


# --- data loading -----------------------------------------------------------------------


def bench_data_loading(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.bench_data import measure, write_tree
    from bnn_export.data_torch import training_data

    size = args.data_input_size
    shape = (3, size, size)
    width = args.data_width
    out: dict[str, Any] = {
        "model": args.data_model,
        "width": width,
        "input_size": size,
        "tree_images": args.data_images,
        "loader": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-train-data-") as tmp:
        root = Path(tmp) / "tree"
        write_tree(root, args.data_images)
        for workers in (0, 2):
            row = measure(root, workers, size, args.batch_size)
            out["loader"][str(workers)] = row["images_per_s"]
            print(
                f"  loader, {workers} workers: {row['images_per_s']:.0f} images/s", file=sys.stderr
            )
        steps = max(1, args.data_images // args.batch_size)
        data = synthetic(shape, args.batch_size * steps, 10, seed=0)
        model = build(args.data_model, args.binarizer_for_data, shape, width)
        # two epochs of the whole synthetic set: the second one counts
        rates = trainer_rates(
            model, data, batch_size=args.batch_size, epochs=2, threads=args.threads
        )
        out["trainer_synthetic"] = statistics.median(rates)
        print(f"  trainer, synthetic: {out['trainer_synthetic']:.0f} images/s", file=sys.stderr)
        tree = training_data(f"imagefolder:{root}", shape, seed=0)
        model = build(args.data_model, args.binarizer_for_data, shape, width)
        rates = trainer_rates(
            model, tree, batch_size=args.batch_size, epochs=2, threads=args.threads, workers=2
        )
        out["trainer_imagefolder"] = statistics.median(rates)
        print(f"  trainer, imagefolder: {out['trainer_imagefolder']:.0f} images/s", file=sys.stderr)
    out["loader_keeps_up"] = max(out["loader"].values()) >= out["trainer_synthetic"]
    return out


# --- report -----------------------------------------------------------------------------


def report(result: dict[str, Any]) -> str:
    m = result["machine"]
    a = result["settings"]
    lines = [
        f"CPU: {m['cpu']} ({m['cores']} cores visible); load average before: "
        f"{m['load_before']}, after: {m['load_after']}"
        + (" (shared machine: numbers are noisy)" if m["shared"] else ""),
        f"torch {m['torch']}; intra-op threads: {a['threads'] or 'trainer default'}; "
        f"batch {a['batch_size']}; {a['steps_per_epoch']} steps per epoch, "
        f"{a['epochs']} measured epochs after 1 warm-up epoch, {a['rounds']} rounds",
    ]
    if result["binarizers"]:
        lines += [
            "",
            "ResNet-20 (3x32x32, synthetic tensors), binarizers side by side:",
            "",
            "| binarizer | images/s | step time vs float | target | met |",
            "|---|---:|---:|---:|---|",
        ]
    for r in result["binarizers"]:
        target = "-" if r["target"] is None else f"<= {r['target']}x"
        met = "-" if r["met"] is None else ("yes" if r["met"] else "**no**")
        if r["binarizer"] in SORTING:
            target, met = "none (sort per channel per step)", "-"
        lines.append(
            f"| {r['binarizer']} | {r['images_per_s']:.0f} | {r['overhead_vs_float']:.2f}x "
            f"| {target} | {met} |"
        )
    runs = result.get("ddp") or []
    if runs:
        lines += [
            "",
            f"ResNet-20 ({runs[0]['binarizer']}), data parallel (gloo, CPU, 1 thread per "
            f"process), global batch {runs[0]['global_batch']}:",
            "",
            "| batch norm | processes | images/s | scaling | target | met |",
            "|---|---:|---:|---:|---:|---|",
        ]
    for d in runs:
        bn = "synchronized (default)" if d["sync_bn"] else "per process (--no-sync-bn)"
        lines += [
            f"| {bn} | 1 | {d['images_per_s']['1']:.0f} | 1.00x | | |",
            f"| {bn} | 2 | {d['images_per_s']['2']:.0f} | {d['scaling']:.2f}x | "
            f">= {d['target']}x | {'yes' if d['met'] else '**no**'} |",
        ]
    t = result.get("data")
    if t is not None:
        w = f", width {t['width']}" if t["width"] is not None else ""
        lines += [
            "",
            f"Data loading: imagefolder tree of {t['tree_images']} JPEGs (72 px) to "
            f"{t['input_size']}x{t['input_size']}, vs the trainer ({t['model']}{w}):",
            "",
            "| what | images/s |",
            "|---|---:|",
            f"| loader alone, 0 workers | {t['loader']['0']:.0f} |",
            f"| loader alone, 2 workers | {t['loader']['2']:.0f} |",
            f"| trainer on synthetic tensors (consumption) | {t['trainer_synthetic']:.0f} |",
            f"| trainer reading the tree, --workers 2 | {t['trainer_imagefolder']:.0f} |",
            "",
            "Loading keeps up: "
            + ("yes" if t["loader_keeps_up"] else "**no**")
            + f" (best loader / consumption = "
            f"{max(t['loader'].values()) / t['trainer_synthetic']:.2f}x; reading the tree "
            f"runs at {t['trainer_imagefolder'] / t['trainer_synthetic']:.2f}x the synthetic "
            "rate)",
        ]
    return "\n".join(lines)


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps-per-epoch", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2, help="Measured epochs per run.")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="Intra-op threads of the single-process runs (default 1: on a shared 2-core "
        "machine two threads made ResNet-20 steps 2-4x slower, not faster; 0: the "
        "trainer's own choice, all cores for ResNet-20).",
    )
    ap.add_argument("--ddp-binarizer", default="ste")
    ap.add_argument(
        "--ddp-no-sync-bn",
        action="store_true",
        help="Data parallel without synchronized batch norm (as train --no-sync-bn).",
    )
    ap.add_argument("--data-model", default="birealnet18")
    ap.add_argument("--data-width", type=float, default=0.25)
    ap.add_argument("--data-input-size", type=int, default=64)
    ap.add_argument("--data-images", type=int, default=256)
    ap.add_argument("--binarizer-for-data", default="ste", help=argparse.SUPPRESS)
    ap.add_argument("--parts", default="binarizers,ddp,data", help="Comma-separated subset to run.")
    ap.add_argument("--json", help="Also write the results as JSON to this file.")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if args.threads == 0:
        args.threads = None
    unknown = parts - {"binarizers", "ddp", "data"}
    if unknown:
        ap.error(f"unknown --parts {sorted(unknown)}; valid: binarizers, ddp, data")
    if args.data_model not in ("birealnet18", "reactnet-a", "quicknet"):
        args.data_width = None  # only the scalable models take a width

    import torch

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    result: dict[str, Any] = {"settings": vars(args)}
    if "binarizers" in parts:
        print("binarizers:", file=sys.stderr)
        result["binarizers"] = bench_binarizers(args)
    if "ddp" in parts:
        print("data parallel:", file=sys.stderr)
        result["ddp"] = bench_ddp(args)
    if "data" in parts:
        print("data loading:", file=sys.stderr)
        result["data"] = bench_data_loading(args)
    load_after = os.getloadavg()
    result["machine"] = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "load_before": " ".join(f"{v:.2f}" for v in load_before),
        "load_after": _load(),
        "shared": max(load_before[0], load_after[0]) > 1,
    }
    result["seconds"] = time.perf_counter() - t0
    if "binarizers" not in parts:
        result["binarizers"] = []
    print(report(result))
    print(f"\n({result['seconds']:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
