"""The resumable state of a PyTorch training run: ``DIR/resume.pt``.

Written atomically at the end of every epoch (by rank 0): the model, optimizer, LR
scheduler and gradient-scaler states, every process's RNG states (torch, CUDA, numpy,
python), the epochs done and the history so far, plus the run's description (framework,
architecture, binarizer, dataset, settings) as JSON. Loaded with
``torch.load(weights_only=True)``: tensors and plain containers only, no code runs.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bnn_export.errors import BnnExportError
from bnn_export.fileio import atomic_path

RESUME_NAME = "resume.pt"
RESUME_FORMAT = "bnn-export-resume"
RESUME_VERSION = 1


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's RNG states, as plain containers and tensors."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": [
            str(kind),
            torch.from_numpy(np.asarray(keys).astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(gauss),
        ],
        "python": [int(version), list(internal), gauss_next],
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_state(directory: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (see ``load_state``) to ``directory/resume.pt`` atomically."""
    payload = dict(state)
    payload["format"] = RESUME_FORMAT
    payload["format_version"] = RESUME_VERSION
    payload["run"] = json.dumps(state["run"], sort_keys=True)
    payload["history"] = json.dumps(state["history"])
    # serialized in memory, then written by Python: a full disk is an OSError that
    # atomic_path reports (torch.save's own writer raises a RuntimeError without errno)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(Path(directory) / RESUME_NAME) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def load_state(directory: str | Path) -> dict[str, Any]:
    """The state ``save_state`` wrote into ``directory`` (``run`` and ``history`` decoded)."""
    path = Path(directory) / RESUME_NAME
    if not path.is_file():
        hint = (
            "it holds a finished run from before resumable runs, or not a run at all"
            if Path(directory).is_dir()
            else "pass the run directory given to `bnn-export train -o DIR`"
        )
        raise BnnExportError(f"no resumable training state in {str(directory)!r}", hint=hint)
    corrupt = BnnExportError(
        f"{str(path)!r} is not a valid bnn-export resume state (corrupt or truncated)",
        hint="start the run again without --resume",
    )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise corrupt from None
    if not isinstance(payload, dict) or payload.get("format") != RESUME_FORMAT:
        raise corrupt
    version = payload.get("format_version")
    if not isinstance(version, int) or version > RESUME_VERSION:
        raise BnnExportError(
            f"{str(path)!r} has resume format version {version}, newer than this bnn-export reads",
            hint="upgrade bnn-export",
        )
    try:
        payload["run"] = json.loads(payload["run"])
        payload["history"] = json.loads(payload["history"])
        int(payload["epoch"])
    except (KeyError, TypeError, ValueError):
        raise corrupt from None
    return dict(payload)


def completed_epochs(directory: str | Path) -> int:
    """How many epochs the resumable state in ``directory`` holds (0 if none/unreadable)."""
    try:
        return int(load_state(directory)["epoch"])
    except BnnExportError:
        return 0
