#!/usr/bin/env python
"""Are the converters' files byte-identical between a base revision and the working tree?

    .venv/bin/python scripts/check-byte-identical.py [--base REV] [--new REV] [--keep DIR]

In one run on one machine (float convolutions round differently on other CPUs, so
hashes are only comparable within a run), this script

1. checks out REV (default HEAD) into a temporary ``git worktree`` (the native library,
   git-ignored, is copied in);
2. trains the demo's digits model once (``bnn-export train --model digits --dataset
   digits --binarizer ste --epochs 2``, with the base code): one checkpoint for both sides;
3. with each tree on ``PYTHONPATH`` (the base and the working tree, or ``--new REV``
   checked out likewise, which keeps edits in progress out), writes the demo's four
   artifacts through the CLI (``bnn-export convert``: tflite, onnx for onnxruntime,
   openvino, reference) and, through
   ``graph_from_torch`` + ``to_onnx`` / the LCE converter, the files of fuzz models
   (tests/fuzz_models.py, derandomized), of a model with every op of the export graph and
   of fixed-seed resnet20 / vgg-small builds: three ONNX targets and a .tflite each;
4. prints a table of sha256 per file and exits 1 if any file differs or is missing.

``--emit OUT`` is the inner step (3) for the tree on ``PYTHONPATH``; ``--compare A B``
the table of step 4 for two such folders.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUZZ_MODELS = 12
ZOO = (("resnet20", "irnet", 1.0), ("resnet20", "sdbnn", 0.0), ("vgg-small", "siman", 1.0))
ONNX_TARGETS = ("onnxruntime", "openvino", "reference")


def _env(tree: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(tree),
        "TF_USE_LEGACY_KERAS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }


def _cli(tree: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "bnn_export", *args],
        cwd=tree,
        env=_env(tree),
        check=True,
        stdout=subprocess.DEVNULL,
    )


# ------------------------------------------------------------------ inner step (--emit)


def _all_ops_model() -> object:
    """A small model with the ops the zoo and the fuzz models leave out: ReLU, Hardtanh,
    float-baseline binary layers (a hardtanh before a float conv/linear), torch.flatten,
    torch.add and a binary linear without a following batch norm."""
    import torch
    from torch import nn

    from bnn_export.binarizers import get
    from bnn_export.models.layers import BinaryConv2d, BinaryLinear

    class AllOps(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.relu = nn.ReLU()
            self.clip = nn.Hardtanh()
            self.bconv = BinaryConv2d(8, 8, 3, binarizer=get("ste"), padding=1)
            self.fconv = BinaryConv2d(8, 8, 3, binarizer=get("none"), padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.pool = nn.MaxPool2d(2)
            self.avg = nn.AvgPool2d(2, stride=1)
            self.ident = nn.Identity()
            self.blin = BinaryLinear(8 * 3 * 3, 16, binarizer=get("irnet"))
            self.flin = BinaryLinear(16, 12, binarizer=get("none"))
            self.bn1 = nn.BatchNorm1d(12, affine=False)
            self.fc = nn.Linear(12, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.clip(self.relu(self.stem(x)))
            x = torch.add(self.bconv(x), self.fconv(x))
            x = self.ident(self.avg(self.pool(self.bn(x) + x)))
            return self.fc(self.bn1(self.flin(self.blin(torch.flatten(x, 1)))))

    torch.manual_seed(3)
    return AllOps().eval()


def _emit(out: Path) -> None:
    import bnn_export

    here = Path(os.environ["PYTHONPATH"]).resolve()
    if not Path(bnn_export.__file__).resolve().is_relative_to(here):
        raise SystemExit(f"bnn_export came from {bnn_export.__file__}, not from {here}")
    out.mkdir(parents=True, exist_ok=True)
    ckpt = os.environ["BYTE_CHECK_CHECKPOINT"]
    for args, name in [
        (["--format", "tflite"], "digits-ste.tflite"),
        (["--format", "onnx", "--target", "onnxruntime"], "digits-ste.onnx"),
        (["--format", "onnx", "--target", "openvino"], "digits-ste-openvino.onnx"),
        (["--format", "onnx", "--target", "reference"], "digits-ste-reference.onnx"),
    ]:
        _cli(here, "convert", ckpt, *args, "-o", str(out / name))

    from hypothesis import HealthCheck, Phase, given, settings

    from bnn_export.binarizers import get
    from bnn_export.convert.graph import graph_from_torch
    from bnn_export.convert.onnx_export import to_onnx
    from bnn_export.convert.tflite_pipeline import LceServer
    from bnn_export.models import arch_spec
    from bnn_export.models.torch_build import build_torch_model
    from tests import fuzz_models

    specs: list[fuzz_models.ModelSpec] = []

    @settings(
        derandomize=True,
        database=None,
        max_examples=FUZZ_MODELS,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(fuzz_models.model_specs())
    def collect(spec: fuzz_models.ModelSpec) -> None:
        specs.append(spec)

    collect()
    (out / "fuzz-specs.txt").write_text("".join(f"{s!r}\n" for s in specs))
    models = [("allops", _all_ops_model(), (3, 8, 8))]
    models += [
        (f"fuzz{i:02d}", fuzz_models.build_model(s), fuzz_models.input_shape(s))
        for i, s in enumerate(specs)
    ]
    for arch, binarizer, pad_value in ZOO:
        spec = arch_spec(arch, pad_value=pad_value)
        model = build_torch_model(spec, get(binarizer), seed=1).eval()
        shape = tuple(spec["kwargs"]["input_shape"])
        models.append((f"{arch}-{binarizer}-pad{int(pad_value)}", model, shape))
    with LceServer() as lce:
        for name, model, shape in models:
            graph = graph_from_torch(model, shape)  # type: ignore[arg-type]
            meta = {"model": name, "bit_ratios": graph.bit_ratios()}
            for target in ONNX_TARGETS:
                proto = to_onnx(graph, target=target, metadata=meta)
                (out / f"{name}-{target}.onnx").write_bytes(proto.SerializeToString())
            try:
                data, _ = lce.convert(graph, meta)
            except Exception as exc:  # noqa: BLE001 -- a refusal is an output to compare too
                data = f"refused: {type(exc).__name__}: {exc}".encode()
            (out / f"{name}.tflite").write_bytes(data)


# ------------------------------------------------------------------ outer step


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def _git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True)
    return out.stdout.strip()


def _checkout(rev: str, dest: Path) -> Path:
    """A worktree of ``rev`` with this checkout's native library (git-ignored) copied in."""
    _git("worktree", "add", "--detach", "-f", str(dest), rev)
    lib = ROOT / "bnn_export" / "runtime" / "_lib"
    if lib.is_dir():
        shutil.copytree(lib, dest / "bnn_export" / "runtime" / "_lib", dirs_exist_ok=True)
    return dest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="HEAD", help="git revision to compare with (HEAD)")
    parser.add_argument(
        "--new", help="git revision to compare (default: the working tree, as it is)"
    )
    parser.add_argument("--keep", help="write the files here (default: a temp dir, removed)")
    parser.add_argument("--emit", help=argparse.SUPPRESS)
    parser.add_argument("--compare", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.emit:
        _emit(Path(args.emit))
        return 0
    if args.compare:
        a, b = (Path(p) for p in args.compare)
        return _report(_digests(a), _digests(b), a.name, b.name)
    rev = _git("rev-parse", "--short", args.base)
    new_label = _git("rev-parse", "--short", args.new) if args.new else "working tree"
    work = Path(args.keep or tempfile.mkdtemp(prefix="bnn-byte-check-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    trees: list[Path] = []
    try:
        trees.append(_checkout(rev, work / "base-tree"))
        trees.append(_checkout(args.new, work / "new-tree") if args.new else ROOT)
        ckpt = work / "digits-ste"
        print(f"training the digits checkpoint ({rev}) ...", flush=True)
        train = ["--model", "digits", "--dataset", "digits", "--binarizer", "ste"]
        _cli(trees[0], "train", *train, "--epochs", "2", "--seed", "0", "-o", str(ckpt))
        outs = []
        for label, tree, out in zip((rev, new_label), trees, ("out-base", "out-new"), strict=True):
            print(f"converting with {label} ...", flush=True)
            subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--emit", str(work / out)],
                cwd=tree,
                env={**_env(tree), "BYTE_CHECK_CHECKPOINT": str(ckpt)},
                check=True,
            )
            outs.append(_digests(work / out))
    finally:
        for tree in trees:
            if tree != ROOT:
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(tree)],
                    cwd=ROOT,
                    check=False,
                    capture_output=True,
                )
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return _report(outs[0], outs[1], rev, new_label)


def _report(old: dict[str, str], new: dict[str, str], old_label: str, new_label: str) -> int:
    """A markdown table of the digests; 1 if any file differs or is missing."""
    names = sorted(old.keys() | new.keys())
    width = max(len(n) for n in names)
    print(f"\n| {'file':<{width}} | {old_label:<16} | {new_label:<16} | same |")
    print(f"|{'-' * (width + 2)}|{'-' * 18}|{'-' * 18}|------|")
    bad = 0
    for n in names:
        a, b = old.get(n, "missing"), new.get(n, "missing")
        bad += a != b or a == "missing"
        print(f"| {n:<{width}} | {a[:16]:<16} | {b[:16]:<16} | {'yes' if a == b else 'NO':<4} |")
    summary = f"{len(names) - bad} of {len(names)} files identical (sha256)"
    print(f"\n{summary}" + (f", {bad} differ" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
