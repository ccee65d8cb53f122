"""The public API (``import bnn_export``) on a network written here, outside the package:
binarize_ -> a plain training loop -> fix_bit_ratios_ -> export (validated) -> load."""

from __future__ import annotations

import json
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import bnn_export
from bnn_export.datasets import load_dataset


class UserNet(nn.Module):
    """A small CNN as a user writes one (no bnn-export layers)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.body = nn.Sequential(
            nn.BatchNorm2d(16),
            nn.Conv2d(16, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 2 * 2, 64, bias=False),
            nn.BatchNorm1d(64),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)))


@cache
def _trained(binarizer: str) -> tuple[nn.Module, np.ndarray, np.ndarray]:
    torch.manual_seed(0)
    data = load_dataset("digits")
    model = bnn_export.binarize_(UserNet(), binarizer)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    epochs = 2
    for epoch in range(epochs):
        bnn_export.step_schedule(model, epoch, epochs)
        model.train()
        for i in range(0, 640, 64):
            loss = nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model, data.x_test, data.y_test


def test_binarize_swaps_all_but_the_first_conv_and_last_linear() -> None:
    model = UserNet()
    w = model.body[1].weight.detach().clone()
    out = bnn_export.binarize_(model, {"name": "irnet", "t_min": 1e-3})
    assert out is model
    assert type(model.stem) is nn.Conv2d and type(model.head[3]) is nn.Linear
    for i in (1, 4):
        layer = model.body[i]
        assert isinstance(layer, bnn_export.BinaryConv2d)
        assert layer.binarizer.name == "irnet" and layer.binarizer.params["t_min"] == 1e-3
        assert (layer.padding, layer.pad_value) == ((1, 1), 1.0)
    assert isinstance(model.head[1], bnn_export.BinaryLinear)
    assert torch.equal(model.body[1].weight, w)


def test_binarize_filter_fn_and_refusals() -> None:
    model = bnn_export.binarize_(
        UserNet(), "ste", filter_fn=lambda m, fqn: fqn == "head.1", pad_value=0.0
    )
    assert isinstance(model.head[1], bnn_export.BinaryLinear)
    assert type(model.body[1]) is nn.Conv2d
    with pytest.raises(bnn_export.BnnExportError, match="nothing to binarize"):
        bnn_export.binarize_(
            nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2)), "ste"
        )
    with pytest.raises(bnn_export.BnnExportError, match="has a bias"):
        bnn_export.binarize_(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3)), "ste")
    with pytest.raises(bnn_export.BnnExportError, match="unknown binarizer"):
        bnn_export.binarize_(UserNet(), "sgn")
    assert set(bnn_export.binarizers()) >= {"ste", "irnet", "siman", "equal_bits", "sdbnn", "gwt"}


def test_export_warns_about_a_schedule_never_stepped(tmp_path: Path) -> None:
    model = bnn_export.binarize_(UserNet(), "irnet").eval()
    with pytest.warns(UserWarning, match=r"layers body\.1, body\.4, head\.1: .*step_schedule"):
        bnn_export.export(model, tmp_path / "m.onnx", input_shape=(1, 8, 8))
    bnn_export.step_schedule(model, 0, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bnn_export.export(model, tmp_path / "m.onnx", input_shape=(1, 8, 8))


@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
def test_user_model_exports_validates_loads_and_predicts_the_same(
    tmp_path: Path, suffix: str
) -> None:
    model, x, y = _trained("ste")
    reference = model(torch.from_numpy(x)).detach().numpy()
    assert (reference.argmax(1) == y).mean() > 0.5  # trained, not random
    path = tmp_path / f"user{suffix}"
    report = bnn_export.export(model, path, input_shape=(1, 8, 8), validation=(x, y))
    assert report.ok and path.is_file() and report.bytes == path.stat().st_size
    assert report.binary_ops == report.binary_layers == 3
    assert report.binary_op == ("LceBconv2d" if suffix == ".tflite" else "BinaryConv2d")
    assert report.numbers["agreement"] >= 0.995
    json.dumps(report.to_dict())
    predictor = bnn_export.load(path)
    logits = predictor.predict(x)
    assert logits.shape == (len(x), 10)
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.995


def test_export_refuses_a_failing_check_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x, y = _trained("ste")
    path = tmp_path / "m.onnx"
    from bnn_export.models import evaluation

    real = evaluation.predict  # a source model whose logits the file cannot match
    monkeypatch.setattr(evaluation, "predict", lambda m, v: -real(m, v))
    with pytest.raises(bnn_export.ExportError, match="nothing was written") as err:
        bnn_export.export(model, path, input_shape=(1, 8, 8), validation=(x, y))
    assert not path.exists() and list(tmp_path.iterdir()) == []
    assert not err.value.report.ok and err.value.report.numbers["agreement"] < 0.5
    with pytest.raises(bnn_export.BnnExportError, match="suffix"):
        bnn_export.export(model, tmp_path / "m.pt", input_shape=(1, 8, 8))


def test_fix_bit_ratios_then_export_with_calibration(tmp_path: Path) -> None:
    model, x, y = _trained("ste")
    report = bnn_export.fix_bit_ratios_(model, 0.3)
    assert set(report) == {"body.1", "body.4", "head.1"}
    for name, ratio in report.items():
        bits = model.get_submodule(name).export_weights().bits
        bits = bits.reshape(len(bits), -1)
        assert ((bits == 1).sum(1) == round(0.3 * bits.shape[1])).all()
        assert ratio.ones_expected == round(0.3 * bits.shape[1])
    data = load_dataset("digits")
    out = bnn_export.export(
        model, tmp_path / "fixed.onnx", input_shape=(1, 8, 8), calibration=data.x_train,
        validation=(x, y),
    )  # fmt: skip
    assert out.ok


def test_every_public_name_resolves_and_is_documented() -> None:
    assert set(bnn_export.__all__) == {*bnn_export._PUBLIC, "__version__", "binarizers"}
    for name in bnn_export.__all__:
        value = getattr(bnn_export, name)
        if name != "__version__":
            assert (value.__doc__ or "").strip(), f"bnn_export.{name} has no docstring"
    assert sorted(dir(bnn_export)) == sorted(bnn_export.__all__)
    with pytest.raises(AttributeError):
        bnn_export.no_such_name  # noqa: B018
