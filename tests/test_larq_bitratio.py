"""``convert --bit-ratio`` on Larq checkpoints: the same OT sort and checks as the PyTorch
route (``bitratio.fix_layers``), exact batch-norm re-estimation, the fixed model handed
to the LCE child, the ratios recorded in the file and the validation against the FIXED
model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("larq")
pytest.importorskip("larq_compute_engine")

import larq as lq  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from bnn_export.binarizers import count_of_top, get  # noqa: E402
from bnn_export.binarizers.larq_impl import to_torch_layout  # noqa: E402
from bnn_export.checkpoint import Checkpoint, load_checkpoint, save_checkpoint  # noqa: E402
from bnn_export.datasets import load_dataset  # noqa: E402
from bnn_export.models import arch_spec  # noqa: E402
from bnn_export.models import larq_build as lb  # noqa: E402
from bnn_export.models.larq_layers import QuantDense1x1  # noqa: E402
from tests.conftest import run_cli  # noqa: E402

pytestmark = [pytest.mark.larq, pytest.mark.slow]

P = 0.3
LAYERS = ("conv1", "conv2", "fc1")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Larq digits run trained for one epoch through the CLI."""
    out = tmp_path_factory.mktemp("larq run") / "run"
    done = run_cli(
        "train",
        "--framework",
        "larq",
        "--binarizer",
        "ste",
        "--epochs",
        "1",
        "-o",
        str(out),
        "--quiet",
    )
    assert done.returncode == 0, done.stderr
    return out


def convert(run: Path, out: Path, *args: str) -> dict[str, Any]:
    done = run_cli("convert", str(run), "--format", "tflite", "-o", str(out), "--json", *args)
    assert done.returncode == 0, done.stderr
    assert out.exists()
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def inspect_metadata(path: Path) -> dict[str, Any]:
    done = run_cli("inspect", str(path), "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["metadata"]  # type: ignore[no-any-return]


def kernel_bits(layer: keras.layers.Layer) -> np.ndarray:
    """The signs of the kernel the layer actually computes with, in PyTorch layout."""
    with lq.context.quantized_scope(True):
        kernel = tf.convert_to_tensor(layer.kernel).numpy()
    if isinstance(layer, QuantDense1x1):
        kernel = kernel.reshape(kernel.shape[-2:])
    return to_torch_layout(np.sign(kernel)).astype(np.int8)


def fixed_model(run: Path, granularity: str, recalibrate: bool) -> keras.Model:
    """The fixed model, rebuilt here from the checkpoint (what the file must compute)."""
    ckpt = load_checkpoint(run)
    model = lb.larq_model_from_checkpoint(ckpt)
    lb.fix_bit_ratios(model, P, granularity)
    if recalibrate:
        lb.recalibrate_batchnorm(model, load_dataset(ckpt.dataset).x_train)
    return model


def check_counts(model: keras.Model, fix: dict[str, Any], granularity: str) -> None:
    """Recount the +1 bits of every layer of ``model`` (independently of the fix code) and
    compare them with round(P * n) and with what the file records."""
    for name in LAYERS:
        layer = model.get_layer(name)
        bits = kernel_bits(layer)
        assert set(np.unique(bits)) == {-1, 1}
        rows = bits.reshape(bits.shape[0], -1) if granularity == "channel" else bits.reshape(1, -1)
        n = rows.shape[1]
        ones = (rows == 1).sum(axis=1)
        assert (np.abs(ones - round(P * n)) <= 1).all() and (ones == count_of_top(P, n)).all()
        # the +1 weights are those with the largest binarizer scores (OT sort)
        scores = layer.kernel_quantizer.score(lb.latent_kernel(layer)).reshape(rows.shape)
        for row_bits, row_scores in zip(rows, scores, strict=True):
            assert row_scores[row_bits == 1].min() >= row_scores[row_bits == -1].max()
        record = fix["layers"][name]
        assert record["n"] == n and record["ones_expected"] == count_of_top(P, n)
        assert record["target"] == P and record["granularity"] == granularity
        assert record["achieved_mean"] == pytest.approx((bits == 1).mean())
        if granularity == "channel":
            assert record["achieved_min"] == record["achieved_max"] == pytest.approx(ones[0] / n)


def tflite_logits(path: Path, x: np.ndarray) -> np.ndarray:
    from bnn_export.runtime.runners import open_runner

    return np.asarray(open_runner(path).predict(x))


def test_channel_fix_with_batchnorm_reestimation(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.tflite"
    result = convert(run, out, "--bit-ratio", str(P))
    fix = result["bit_ratio_fix"]
    assert fix["target"] == P and fix["granularity"] == "channel" and fix["verified"]
    assert fix["batchnorm_reestimated"] is True
    assert sorted(fix["layers"]) == sorted(LAYERS)
    validation = result["validation"]
    assert validation["ok"] and validation["agreement"] >= 0.995, validation
    assert result["facts"]["binary_ops"] == 3
    # the file records the same fix, and per-layer ratios of the bits it holds
    meta = inspect_metadata(out)
    assert meta["bit_ratio_fix"] == fix
    for name in LAYERS:
        assert meta["bit_ratios"][name]["mean"] == pytest.approx(
            fix["layers"][name]["achieved_mean"]
        )
    # independently: the fixed model rebuilt here holds the counts recorded ...
    model = fixed_model(run, "channel", recalibrate=True)
    check_counts(model, fix, "channel")
    # ... and the .tflite computes it (bits and re-estimated batch norm), not the checkpoint
    x = load_dataset("digits").x_test
    logits = tflite_logits(out, x)
    expected = lb.predict(model, x)
    np.testing.assert_allclose(logits, expected, atol=1e-3 * (np.abs(expected).max() + 1))
    unfixed = lb.predict(lb.larq_model_from_checkpoint(load_checkpoint(run)), x)
    assert np.abs(unfixed - expected).max() > 1e-2


def test_layer_granularity_without_recalibration(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.tflite"
    result = convert(
        run, out, "--bit-ratio", str(P), "--ot-granularity", "layer", "--no-recalibrate-bn"
    )
    fix = result["bit_ratio_fix"]
    assert fix["granularity"] == "layer" and fix["batchnorm_reestimated"] is False
    assert result["validation"]["agreement"] >= 0.995, result["validation"]
    meta = inspect_metadata(out)
    assert meta["bit_ratio_fix"] == fix
    assert meta["bit_ratio_fix"]["batchnorm_reestimated"] is False
    model = fixed_model(run, "layer", recalibrate=False)
    check_counts(model, fix, "layer")
    # the batch norms are the checkpoint's
    state = load_checkpoint(run).tensors
    for key, value in lb.batchnorm_state(model).items():
        np.testing.assert_array_equal(value, state[key])
    x = load_dataset("digits").x_test
    expected = lb.predict(model, x)
    np.testing.assert_allclose(
        tflite_logits(out, x), expected, atol=1e-3 * (np.abs(expected).max() + 1)
    )


def test_unfixed_larq_file_records_its_bit_ratios(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.tflite"
    result = convert(run, out, "--no-validate")
    assert result["bit_ratio_fix"] is None
    meta = inspect_metadata(out)
    assert meta["bit_ratio_fix"] is None
    model = lb.larq_model_from_checkpoint(load_checkpoint(run))
    assert sorted(meta["bit_ratios"]) == sorted(LAYERS)
    for name in LAYERS:
        bits = kernel_bits(model.get_layer(name))
        assert meta["bit_ratios"][name]["mean"] == pytest.approx((bits == 1).mean())
    # a serving signature, as for PyTorch checkpoints (lce_worker.finish_flatbuffer)
    from tests.test_tflite_export import _serving_signature

    assert _serving_signature(out.read_bytes()) == (["input"], 1)


@pytest.mark.parametrize(
    "args, layer",
    [
        (("--bit-ratio", "0.001"), "conv1"),  # round(0.001 * 288) = 0 per channel
        (("--bit-ratio", "0.99999", "--ot-granularity", "layer"), "conv1"),  # 18432 per layer
    ],
)
def test_unmeetable_ratio_is_refused_naming_the_layer(
    run: Path, tmp_path: Path, args: tuple[str, ...], layer: str
) -> None:
    out = tmp_path / "m.tflite"
    done = run_cli("convert", str(run), "--format", "tflite", "-o", str(out), *args)
    assert done.returncode == 2, done.stderr
    assert f"cannot be met in layer {layer!r}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_onnx_of_a_larq_checkpoint_is_refused(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    done = run_cli("convert", str(run), "--format", "onnx", "-o", str(out), "--bit-ratio", "0.3")
    assert done.returncode == 2 and "Larq checkpoint converts to .tflite only" in done.stderr
    assert not out.exists()


def test_pruned_larq_weights_are_refused(tmp_path: Path) -> None:
    arch = arch_spec("digits")
    config = get("equal_bits", prune_rate=0.4)
    model = lb.build_larq_model(arch, config, seed=0)
    save_checkpoint(
        tmp_path / "run" / "checkpoint.safetensors",
        Checkpoint("larq", arch, config, "digits", lb.larq_state(model)),
    )
    out = tmp_path / "m.tflite"
    done = run_cli(
        "convert", str(tmp_path / "run"), "--format", "tflite", "-o", str(out), "--bit-ratio", "0.3"
    )
    assert done.returncode == 2, done.stderr
    assert "layer 'conv1' has pruned (zero) weights" in done.stderr
    assert not out.exists()


@pytest.mark.parametrize("name", ["ste", "irnet", "siman", "sdbnn", "equal_bits"])
def test_larq_and_torch_fixing_sort_alike(name: str) -> None:
    """The same weights fixed in PyTorch and in Larq give the same +1 weights (the Larq
    dense kernel orders its inputs differently: compare the scores of the +1 weights)."""
    from bnn_export.bitratio import fix_bit_ratios
    from bnn_export.models.torch_build import build_torch_model, torch_state
    from bnn_export.models.torch_to_larq import load_torch_state_into_larq

    arch = arch_spec("digits")
    torch_model = build_torch_model(arch, get(name), seed=1)
    larq_model = lb.build_larq_model(arch, get(name))
    load_torch_state_into_larq(larq_model, torch_state(torch_model))
    layers = dict(torch_model.named_modules())
    torch_scores = {
        n: layers[n].weight_quantizer.score(layers[n].weight).detach().numpy() for n in LAYERS
    }
    torch_report = fix_bit_ratios(torch_model, P)
    larq_report = lb.fix_bit_ratios(larq_model, P)
    assert {k: v.to_dict() for k, v in torch_report.items()} == {
        k: v.to_dict() for k, v in larq_report.items()
    }
    for n in LAYERS:
        t_bits = layers[n].export_weights().bits
        t_scores = torch_scores[n]
        layer = larq_model.get_layer(n)
        l_bits = lb.export_layer(layer).bits
        l_scores = layer.kernel_quantizer.score(lb.latent_kernel(layer))
        assert (kernel_bits(layer) == l_bits).all()  # the model computes with its export
        for o in range(t_bits.shape[0]):
            np.testing.assert_allclose(
                np.sort(t_scores[o][t_bits[o] == 1].ravel()),
                np.sort(l_scores[o][l_bits[o] == 1].ravel()),
                rtol=1e-6,
            )
        if n != "fc1":
            assert (t_bits == l_bits).all()


def test_fixing_an_equal_bits_larq_model_at_its_ratio_changes_nothing() -> None:
    arch = arch_spec("digits")
    model = lb.build_larq_model(arch, get("equal_bits", bit_ratio=P), seed=2)
    x = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
    before = lb.predict(model, x)
    lb.fix_bit_ratios(model, P)
    np.testing.assert_allclose(lb.predict(model, x), before, rtol=1e-6, atol=1e-6)


def test_batchnorm_reestimation_is_the_exact_average() -> None:
    """x -> BN1 -> ReLU -> 1x1 conv -> BN2, re-estimated in uneven batches: each batch norm
    holds the exact mean and unbiased variance of its input over all of x, BN2's input
    computed with BN1's new statistics (numpy, float64)."""
    rng = np.random.default_rng(0)
    inputs = keras.Input((3, 3, 2))
    bn1 = keras.layers.BatchNormalization(epsilon=1e-5, name="bn1")
    conv = keras.layers.Conv2D(3, 1, use_bias=False, name="conv")
    bn2 = keras.layers.BatchNormalization(epsilon=1e-5, name="bn2")
    model = keras.Model(inputs, bn2(conv(keras.layers.ReLU()(bn1(inputs)))))
    gamma, beta = rng.uniform(0.5, 2, 2), rng.normal(size=2)
    bn1.set_weights([gamma, beta, rng.normal(size=2), rng.uniform(1, 2, 2)])
    w = rng.normal(size=(1, 1, 2, 3))
    conv.set_weights([w])
    x = (rng.normal(size=(23, 2, 3, 3)) * [[[[3.0]], [[0.5]]]] + 5).astype(np.float32)  # NCHW

    lb.recalibrate_batchnorm(model, x, batch_size=5)

    h = x.transpose(0, 2, 3, 1).astype(np.float64).reshape(-1, 2)
    m1, v1 = h.mean(axis=0), h.var(axis=0, ddof=1)
    y = np.maximum((h - m1) / np.sqrt(v1 + 1e-5) * gamma + beta, 0) @ w.reshape(2, 3)
    m2, v2 = y.mean(axis=0), y.var(axis=0, ddof=1)
    np.testing.assert_allclose(bn1.moving_mean.numpy(), m1, rtol=1e-5)
    np.testing.assert_allclose(bn1.moving_variance.numpy(), v1, rtol=1e-5)
    np.testing.assert_allclose(bn2.moving_mean.numpy(), m2, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn2.moving_variance.numpy(), v2, rtol=1e-4)


def test_fixed_state_round_trips_through_npz(tmp_path: Path) -> None:
    """What the parent hands the LCE child (an .npz) rebuilds the same fixed model."""
    arch = arch_spec("digits")
    model = lb.build_larq_model(arch, get("siman"), seed=4)
    ckpt = Checkpoint("larq", arch, get("siman"), "digits", lb.larq_state(model))
    x = np.random.default_rng(1).standard_normal((32, 1, 8, 8)).astype(np.float32)
    lb.fix_bit_ratios(model, 0.4, "layer")
    lb.recalibrate_batchnorm(model, x)
    np.savez(tmp_path / "fixed.npz", **lb.fixed_state(model))
    again = lb.larq_model_from_checkpoint(ckpt)
    with np.load(tmp_path / "fixed.npz") as arrays:
        lb.apply_fixed_state(again, dict(arrays))
    np.testing.assert_array_equal(lb.predict(again, x), lb.predict(model, x))
    assert lb.layer_bit_ratios(again) == lb.layer_bit_ratios(model)
