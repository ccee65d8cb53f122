"""`bnn-export train --framework larq`: accuracy, metrics, checkpoint reload."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("larq")

from bnn_export.checkpoint import load_checkpoint  # noqa: E402
from bnn_export.datasets import load_dataset  # noqa: E402
from tests.conftest import run_cli  # noqa: E402

pytestmark = pytest.mark.larq


@pytest.mark.slow
def test_train_larq_ste_digits_reaches_85_percent_and_reloads(tmp_path: Path) -> None:
    from bnn_export.models.larq_build import larq_model_from_checkpoint, predict
    from bnn_export.train_larq import accuracy

    out = tmp_path / "run"
    res = run_cli("train", "--framework", "larq", "--binarizer", "ste", "-o", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["framework"] == "larq" and metrics["binarizer"]["name"] == "ste"
    assert metrics["test_accuracy"] >= 0.85
    assert len(metrics["history"]) == metrics["epochs"] == 20
    assert set(metrics["history"][0]) == {
        "epoch",
        "loss",
        "train_accuracy",
        "test_accuracy",
        "seconds",
    }
    assert set(metrics["bit_ratios"]) == {"conv1", "conv2", "fc1"}
    for r in metrics["bit_ratios"].values():
        assert 0.0 < r["min"] <= r["mean"] <= r["max"] < 1.0

    ckpt = load_checkpoint(out)
    assert ckpt.framework == "larq"
    model = larq_model_from_checkpoint(ckpt)
    data = load_dataset("digits")
    assert accuracy(model, data.x_test, data.y_test) == pytest.approx(metrics["test_accuracy"])
    again = larq_model_from_checkpoint(load_checkpoint(out))
    x = data.x_test[:16]
    np.testing.assert_array_equal(predict(model, x), predict(again, x))


def test_weight_decay_skips_no_weight_decay_kernels() -> None:
    from bnn_export.binarizers import get
    from bnn_export.models import arch_spec
    from bnn_export.models.larq_build import build_larq_model
    from bnn_export.train_larq import decayed_variables

    siman = build_larq_model(arch_spec("digits"), get("siman"))
    names = {v.name for v in decayed_variables(siman)}
    assert not any(n.startswith(("conv1/kernel", "conv2/kernel", "fc1/kernel")) for n in names)
    assert any(n.startswith("conv0/kernel") for n in names)
    assert not any("kernel_quantizer" in n and "alpha" in n for n in names)  # nor alpha
    assert len(names) == len(siman.trainable_variables) - 6
    ste = build_larq_model(arch_spec("digits"), get("ste"))
    assert len(decayed_variables(ste)) == len(ste.trainable_variables)


def test_train_larq_one_epoch_json(tmp_path: Path) -> None:
    res = run_cli("train", "--framework", "larq", "--binarizer", "irnet", "--epochs", "1", "--json")
    assert res.returncode == 0, res.stderr
    metrics = json.loads(res.stdout)
    assert metrics["framework"] == "larq" and metrics["epochs"] == 1
    assert set(metrics["bit_ratios"]) == {"conv1", "conv2", "fc1"}
