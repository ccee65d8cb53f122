from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bnn_export.binarizers import count_of_top, get
from bnn_export.binarizers import torch_impl as bz
from bnn_export.bitratio import fix_bit_ratios, fix_layer_bits, ot_sort_bits
from bnn_export.datasets import load_dataset
from bnn_export.errors import BnnExportError
from bnn_export.models import arch_spec
from bnn_export.models.layers import binary_layers
from bnn_export.models.torch_build import build_torch_model
from bnn_export.train_torch import TrainSettings, accuracy, train
from tests.conftest import run_cli

shapes = st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 3), st.integers(1, 3))
ratios = st.floats(0.01, 0.99)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    w=shapes.flatmap(lambda s: arrays(np.float32, s, elements=st.floats(-2, 2, width=32))),
    p=ratios,
    granularity=st.sampled_from(["channel", "layer"]),
)
def test_fixing_gives_exactly_round_pn_ones(w: np.ndarray, p: float, granularity: str) -> None:
    n = w.size // w.shape[0] if granularity == "channel" else w.size
    if count_of_top(p, n) in (0, n):  # every weight would get the same sign: refused
        with pytest.raises(BnnExportError, match="cannot be met"):
            fix_layer_bits(w, np.ones(w.shape[0], np.float32), p, granularity)
        return
    export, ratio = fix_layer_bits(w, np.ones(w.shape[0], np.float32), p, granularity)
    rows = (
        export.bits.reshape(w.shape[0], -1)
        if granularity == "channel"
        else export.bits.reshape(1, -1)
    )
    n = rows.shape[1]
    assert ((rows == 1).sum(axis=1) == count_of_top(p, n)).all()
    assert set(np.unique(rows)) <= {-1, 1}
    # the +1 weights are the largest ones: min over +1 >= max over -1
    for row, bits in zip(w.reshape(len(rows), -1), rows, strict=True):
        if 0 < (bits == 1).sum() < n:
            assert row[bits == 1].min() >= row[bits == -1].max()
    assert ratio.ones_expected == count_of_top(p, n) and ratio.n == n


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    w=arrays(
        np.float32,
        st.tuples(st.integers(1, 5), st.integers(1, 40)),
        elements=st.sampled_from([-1.0, 0.0, 0.5, 1.0]),
    ),  # many ties
    p=ratios,
)
def test_numpy_and_torch_sorts_agree_on_ties(w: np.ndarray, p: float) -> None:
    np.testing.assert_array_equal(
        ot_sort_bits(w, p), bz.ot_bits(torch.from_numpy(w), p).numpy().astype(np.int8)
    )


def test_count_of_top_rounds_halves_up() -> None:
    assert [count_of_top(0.5, n) for n in (1, 2, 3, 5)] == [1, 1, 2, 3]
    assert count_of_top(0.3, 10) == 3 and count_of_top(0.25, 2) == 1


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    return load_dataset("digits")


@pytest.mark.parametrize("p", [0.3, 0.5])
def test_fixing_an_equal_bits_model_at_its_ratio_changes_nothing(digits, p: float) -> None:  # type: ignore[no-untyped-def]
    model = build_torch_model(arch_spec("digits"), get("equal_bits", bit_ratio=p))
    train(model, digits, TrainSettings(epochs=3, progress=False))
    before = accuracy(model, digits.x_test, digits.y_test)
    bits_before = {n: layer.export_weights().bits for n, layer in binary_layers(model)}
    fixed = copy.deepcopy(model)
    report = fix_bit_ratios(fixed, p)
    for name, layer in binary_layers(fixed):
        np.testing.assert_array_equal(layer.export_weights().bits, bits_before[name])
        assert report[name].achieved_mean == pytest.approx(
            count_of_top(p, report[name].n) / report[name].n
        )
    assert accuracy(fixed, digits.x_test, digits.y_test) == before


@pytest.mark.parametrize("name", ["ste", "irnet", "siman", "sdbnn", "gwt"])
def test_any_binarizer_can_be_fixed(name: str) -> None:
    model = build_torch_model(arch_spec("digits"), get(name))
    model(torch.randn(2, 1, 8, 8))  # lazy init
    report = fix_bit_ratios(model, 0.25, "channel")
    for layer_name, layer in binary_layers(model):
        bits = layer.export_weights().bits
        per_channel = (bits.reshape(bits.shape[0], -1) == 1).sum(axis=1)
        assert (per_channel == count_of_top(0.25, report[layer_name].n)).all()


def test_pruned_model_cannot_be_fixed() -> None:
    model = build_torch_model(arch_spec("digits"), get("equal_bits", prune_rate=0.2))
    with pytest.raises(BnnExportError, match="pruned"):
        fix_bit_ratios(model, 0.5)


@pytest.mark.parametrize("p", [0.0, 1.0, float("nan")])
def test_fixing_rejects_bad_ratios(p: float) -> None:
    model = build_torch_model(arch_spec("digits"), get("ste"))
    with pytest.raises(BnnExportError, match="bit ratio"):
        fix_bit_ratios(model, p)


def test_sweep_cli_writes_table_json_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    res = run_cli(
        "sweep",
        "--binarizers",
        "equal_bits,ste",
        "--bit-ratios",
        "0.3,0.5",
        "--epochs",
        "2",
        "-o",
        str(out),
        "--quiet",
    )
    assert res.returncode == 0, res.stderr
    data = json.loads((out / "sweep.json").read_text())
    assert [(r["binarizer"], r["bit_ratio"], r["trained_at_ratio"]) for r in data["rows"]] == [
        ("equal_bits", 0.3, True),
        ("equal_bits", 0.5, True),
        ("ste", 0.3, False),
        ("ste", 0.5, False),
    ]
    for r in data["rows"][:2]:  # trained at p: fixing at p changes nothing
        assert r["fixed_accuracy"] == r["trained_accuracy"]
    assert "| equal_bits | 0.30 | yes |" in (out / "sweep.md").read_text()
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bit-ratios", "0.5,1.5"], "bit ratio must be a number in (0, 1), got 1.5"),
        (["--bit-ratios", "0,0.5"], "bit ratio must be a number in (0, 1), got 0.0"),
        (["--bit-ratios", "nan"], "bit ratio must be a number in (0, 1), got nan"),
        (["--bit-ratios", "half"], "comma-separated numbers"),
        (["--binarizers", "xnor"], "unknown binarizer 'xnor'"),
        (["--ot-granularity", "tensor"], "granularity must be one of channel, layer"),
    ],
)
def test_sweep_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    res = run_cli("sweep", "-o", str(tmp_path / "s"), "--epochs", "1", *args)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "s").exists()
