"""Larq model zoo: PyTorch weights loaded into the Larq model give the same logits;
state round trip; clear errors on mismatched checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("larq")

import tf_keras as keras  # noqa: E402

from bnn_export.binarizers import REGISTRY, get  # noqa: E402
from bnn_export.checkpoint import Checkpoint  # noqa: E402
from bnn_export.errors import BnnExportError  # noqa: E402
from bnn_export.models import arch_spec  # noqa: E402
from bnn_export.models.larq_build import (  # noqa: E402
    binary_layers,
    build_larq_model,
    larq_model_from_checkpoint,
    larq_state,
    predict,
)
from bnn_export.models.layers import binary_layers as torch_binary_layers  # noqa: E402
from bnn_export.models.torch_build import build_torch_model, torch_state  # noqa: E402
from bnn_export.models.torch_to_larq import load_torch_state_into_larq  # noqa: E402

pytestmark = pytest.mark.larq


def _randomize_bn(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 2 - 1)


def _compare(arch_name: str, binarizer: str, pad_value: float, batch: int = 3) -> None:
    arch = arch_spec(arch_name, pad_value=pad_value)
    torch.manual_seed(0)
    tm = build_torch_model(arch, get(binarizer))
    _randomize_bn(tm, 1)
    tm.eval()
    c, h, w = arch["kwargs"]["input_shape"]
    x = np.random.default_rng(2).standard_normal((batch, c, h, w)).astype(np.float32)
    with torch.no_grad():
        want = tm(torch.from_numpy(x)).numpy()
    km = build_larq_model(arch, get(binarizer))
    load_torch_state_into_larq(km, torch_state(tm))
    got = predict(km, x)
    np.testing.assert_allclose(got, want, atol=1e-5 * (np.abs(want).max() + 1))
    assert [layer.name for layer in binary_layers(km)] == [
        n.replace(".", "_") for n, _ in torch_binary_layers(tm)
    ]


@pytest.mark.parametrize("pad_value", [0.0, 1.0])
@pytest.mark.parametrize("arch_name", ["digits", "resnet20", "vgg-small"])
def test_torch_weights_give_the_same_logits(arch_name: str, pad_value: float) -> None:
    _compare(arch_name, "ste", pad_value)


@pytest.mark.parametrize("binarizer", [n for n in REGISTRY if n != "ste"])
def test_every_binarizer_digits_logits_match(binarizer: str) -> None:
    _compare("digits", binarizer, 1.0, batch=8)


@pytest.mark.parametrize("pad_value", [0.0, 1.0])  # 1.0: strided convs pad before the sign
@pytest.mark.parametrize("binarizer", ["sdbnn", "siman"])
def test_binarizer_parameters_transfer_in_resnet20(binarizer: str, pad_value: float) -> None:
    _compare("resnet20", binarizer, pad_value, batch=2)


def test_resnet18_builds_with_16_binary_convs() -> None:
    model = build_larq_model(arch_spec("resnet18"), get("ste"))
    assert len(binary_layers(model)) == 16
    assert model.output_shape == (None, 10)


def test_state_round_trip_through_a_checkpoint() -> None:
    arch = arch_spec("digits")
    keras.utils.set_random_seed(3)
    model = build_larq_model(arch, get("sdbnn"))
    state = larq_state(model)
    assert "conv1/kernel" in state and "fc1/kernel_quantizer/alpha" in state
    assert "fc1/input_quantizer/se_fc1.weight" in state and "bn1/moving_variance" in state
    ckpt = Checkpoint("larq", arch, get("sdbnn"), "digits", state)
    again = larq_model_from_checkpoint(ckpt)
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(predict(again, x), predict(model, x))


def test_checkpoint_mismatches_are_clear_errors() -> None:
    arch = arch_spec("digits")
    state = larq_state(build_larq_model(arch, get("ste")))
    with pytest.raises(BnnExportError, match="not Larq"):
        larq_model_from_checkpoint(Checkpoint("torch", arch, get("ste"), "digits", state))
    missing = {k: v for k, v in state.items() if k != "conv1/kernel"}
    with pytest.raises(BnnExportError, match=r"missing \['conv1/kernel'\]"):
        larq_model_from_checkpoint(Checkpoint("larq", arch, get("ste"), "digits", missing))
    wrong = dict(state, **{"conv1/kernel": np.zeros((3, 3, 32, 7), np.float32)})
    with pytest.raises(BnnExportError, match="has shape"):
        larq_model_from_checkpoint(Checkpoint("larq", arch, get("ste"), "digits", wrong))
    with pytest.raises(BnnExportError, match="missing"):  # binarizer variables differ
        larq_model_from_checkpoint(Checkpoint("larq", arch, get("siman"), "digits", state))


def test_transfer_rejects_a_state_of_another_architecture() -> None:
    torch_model = build_torch_model(arch_spec("resnet20"), get("ste"))
    larq_model = build_larq_model(arch_spec("digits"), get("ste"))
    with pytest.raises(BnnExportError, match="'conv0.weight' has shape"):
        load_torch_state_into_larq(larq_model, torch_state(torch_model))
    digits_state = torch_state(build_torch_model(arch_spec("digits"), get("ste")))
    with pytest.raises(BnnExportError, match="'extra' has no Larq layer"):
        load_torch_state_into_larq(larq_model, {**digits_state, "extra.weight": np.ones(2)})
    incomplete = {k: v for k, v in digits_state.items() if not k.startswith("fc2.")}
    with pytest.raises(BnnExportError, match=r"no PyTorch weights for Larq layers \['fc2'\]"):
        load_torch_state_into_larq(larq_model, incomplete)


@pytest.mark.parametrize("arch_name, binarizer", [("digits", "sdbnn"), ("resnet20", "ste")])
def test_models_serialize_by_config(arch_name: str, binarizer: str) -> None:
    """Every custom layer/quantizer is registered: from_config rebuilds the same model."""
    from bnn_export.models.larq_build import load_larq_state

    model = build_larq_model(arch_spec(arch_name), get(binarizer), seed=0)
    revived = keras.Model.from_config(model.get_config())
    load_larq_state(revived, larq_state(model), "revived")
    c, h, w = arch_spec(arch_name)["kwargs"]["input_shape"]
    x = np.random.default_rng(0).standard_normal((2, c, h, w)).astype(np.float32)
    np.testing.assert_array_equal(predict(revived, x), predict(model, x))
