from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bnn_export.binarizers import get
from bnn_export.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from bnn_export.errors import BnnExportError
from bnn_export.models import arch_spec
from bnn_export.models.torch_build import (
    build_torch_model,
    torch_model_from_checkpoint,
    torch_state,
)


def _ckpt() -> Checkpoint:
    arch = arch_spec("digits")
    model = build_torch_model(arch, get("ste"))
    return Checkpoint("torch", arch, get("ste"), "digits", torch_state(model))


def test_round_trip_rebuilds_an_identical_model(tmp_path: Path) -> None:
    ckpt = _ckpt()
    save_checkpoint(tmp_path / "c.safetensors", ckpt)
    loaded = load_checkpoint(tmp_path / "c.safetensors")
    assert loaded.arch == ckpt.arch and loaded.binarizer == ckpt.binarizer
    a = build_torch_model(ckpt.arch, ckpt.binarizer)
    a.load_state_dict({k: torch.from_numpy(v) for k, v in ckpt.tensors.items()})
    b = torch_model_from_checkpoint(loaded)
    a.eval()
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


@pytest.mark.parametrize("damage", ["truncate", "zero", "garbage"])
def test_corrupt_checkpoints_are_clear_errors(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, _ckpt())
    data = path.read_bytes()
    path.write_bytes(
        {"truncate": data[: len(data) // 2], "zero": b"", "garbage": b"\x00" * 64}[damage]
    )
    with pytest.raises(BnnExportError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    header = _ckpt().header() | {"format_version": 99}
    save_file(
        {"x": np.zeros(1, np.float32)},
        str(tmp_path / "c.safetensors"),
        metadata={"bnn_export": json.dumps(header)},
    )
    with pytest.raises(BnnExportError, match="format version 99, newer"):
        load_checkpoint(tmp_path / "c.safetensors")


def test_nan_weights_are_refused(tmp_path: Path) -> None:
    ckpt = _ckpt()
    ckpt.tensors["conv1.weight"][0, 0, 0, 0] = np.nan
    save_checkpoint(tmp_path / "c.safetensors", ckpt)
    with pytest.raises(BnnExportError, match="NaN/inf"):
        load_checkpoint(tmp_path / "c.safetensors")


def test_missing_checkpoint_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(BnnExportError, match="bnn-export train -o DIR"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("binarizer", ["irnet", "sdbnn", "gwt", "siman"])
def test_scalar_buffers_keep_their_shape(tmp_path: Path, binarizer: str) -> None:
    arch = arch_spec("digits")
    model = build_torch_model(arch, get(binarizer))
    model(torch.randn(2, 1, 8, 8))
    state = torch_state(model)
    assert any(v.ndim == 0 for v in state.values())
    save_checkpoint(
        tmp_path / "c.safetensors", Checkpoint("torch", arch, get(binarizer), "digits", state)
    )
    loaded = load_checkpoint(tmp_path / "c.safetensors")
    assert {k: v.shape for k, v in loaded.tensors.items()} == {k: v.shape for k, v in state.items()}
    torch_model_from_checkpoint(loaded)
