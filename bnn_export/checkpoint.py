"""Self-describing checkpoints: safetensors tensors + a JSON header.

The header records the format version, framework, architecture, binarizer config,
dataset and the dataset's preprocessing (``bnn_export.datasets``: how raw pixels became
model inputs, and the training augmentation), so a checkpoint alone rebuilds its model
and conversion can check that it validates on identically preprocessed images. Loading
never executes code from the file (safetensors holds raw tensors only).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnn_export import __version__
from bnn_export.binarizers import BinarizerConfig
from bnn_export.binarizers import get as get_binarizer
from bnn_export.errors import BnnExportError
from bnn_export.fileio import atomic_path

FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.safetensors"
FRAMEWORKS = ("torch", "larq")


@dataclass
class Checkpoint:
    framework: str
    arch: dict[str, Any]
    binarizer: BinarizerConfig
    dataset: str
    tensors: dict[str, np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict)
    #: the training data's preprocessing record; None in checkpoints written before
    #: bnn-export recorded it (``bnn_export.datasets.legacy_preprocessing()`` says what it was)
    preprocessing: dict[str, Any] | None = None

    def header(self) -> dict[str, Any]:
        return {
            "format": "bnn-export-checkpoint",
            "format_version": FORMAT_VERSION,
            "framework": self.framework,
            "arch": self.arch,
            "binarizer": self.binarizer.to_dict(),
            "dataset": self.dataset,
            "extra": self.extra,
            "preprocessing": self.preprocessing,
            "bnn_export_version": __version__,
        }


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    from safetensors.numpy import save_file

    # np.ascontiguousarray would turn 0-d scalars (e.g. EDE's t) into shape (1,)
    tensors = {k: np.array(v, copy=True, order="C") for k, v in ckpt.tensors.items()}
    from safetensors import SafetensorError

    with atomic_path(path) as tmp:
        try:
            save_file(
                tensors,
                str(tmp),
                metadata={"bnn_export": json.dumps(ckpt.header(), sort_keys=True)},
            )
        except SafetensorError as exc:  # its I/O errors (e.g. disk full) are not OSError
            raise OSError(str(exc).rsplit(": ", 1)[-1]) from None


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A run directory or a checkpoint file -> the checkpoint file."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    if not p.is_file():
        raise BnnExportError(
            f"no checkpoint at {str(path)!r}",
            hint="pass a run directory written by `bnn-export train -o DIR` or its checkpoint.safetensors",
        )
    return p


def load_checkpoint(path: str | Path) -> Checkpoint:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    p = resolve_checkpoint_path(path)
    corrupt = BnnExportError(
        f"{str(p)!r} is not a valid bnn-export checkpoint (corrupt or truncated)",
        hint="re-run `bnn-export train` to write it again",
    )
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="numpy") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(p))
        header = json.loads(meta["bnn_export"])
    except (SafetensorError, OSError, KeyError, ValueError, json.JSONDecodeError):
        raise corrupt from None
    if not isinstance(header, dict) or header.get("format") != "bnn-export-checkpoint":
        raise corrupt
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BnnExportError(
            f"checkpoint {str(p)!r} has format version {version}, newer than this bnn-export "
            f"({__version__}) reads (<= {FORMAT_VERSION})",
            hint="upgrade bnn-export",
        )
    if header.get("framework") not in FRAMEWORKS:
        raise corrupt
    for name, arr in tensors.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise BnnExportError(
                f"checkpoint {str(p)!r} has non-finite values (NaN/inf) in {name!r}",
                hint="the training run diverged; retrain with a lower --lr",
            )
    return Checkpoint(
        framework=header["framework"],
        arch=header["arch"],
        binarizer=get_binarizer(header["binarizer"]),
        dataset=header.get("dataset", "digits"),
        tensors=tensors,
        extra=header.get("extra", {}),
        preprocessing=header.get("preprocessing"),
    )
