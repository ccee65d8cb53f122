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


# torch and TensorFlow round float layers differently, and differently on each CPU (AVX-512,
# AVX2 and NEON kernels): a value at 0 can binarize to +1 in one and -1 in the other and move
# everything after it. So instead of logits to a tolerance on every sample, per binary layer
# in model order: the value each side binarizes (its pre-sign value: x, x - mean, x + SE(x))
# must agree to float32 rounding and give the same sign, except where both are within
# rounding of 0 (a sample is followed up to its first such flip only); the logits of the
# samples with no flip must agree to float32 rounding.
SIGN_RTOL = (
    1e-3  # of the sample's largest |pre-sign value| in the layer (tests/test_onnx_export.py)
)
LOGIT_RTOL = 1e-4


def _torch_pre_sign(tm: torch.nn.Module, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Logits, and per binary layer the tensor its input quantizer takes the sign of."""
    from bnn_export.binarizers import torch_impl

    pre: dict[str, np.ndarray] = {}
    inside: list[str] = []
    sign_pm1 = torch_impl.sign_pm1

    def recording_sign(t: torch.Tensor) -> torch.Tensor:
        if inside:
            pre[inside[-1]] = t.detach().numpy().reshape(len(t), -1).copy()
        return sign_pm1(t)

    def leave(_m: torch.nn.Module, _a: object, _o: object) -> None:
        inside.pop()  # (a forward hook returning a value would replace the output)

    hooks = []
    for name, layer in torch_binary_layers(tm):
        q = layer.input_quantizer
        hooks.append(q.register_forward_pre_hook(lambda _m, _a, n=name: inside.append(n)))
        hooks.append(q.register_forward_hook(leave))
    torch_impl.sign_pm1 = recording_sign  # type: ignore[assignment]
    try:
        tm.eval()
        with torch.no_grad():
            logits = tm(torch.from_numpy(x)).numpy()
    finally:
        torch_impl.sign_pm1 = sign_pm1  # type: ignore[assignment]
        for h in hooks:
            h.remove()
    return logits, pre


def _larq_pre_sign(km: keras.Model, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits, and per binary layer (model order) its input quantizer's pre-sign value in
    PyTorch's element order (NCHW; a Flatten's features reordered like the weights)."""
    from bnn_export.models.torch_to_larq import _flatten_perm

    layers = binary_layers(km)
    probe = keras.Model(km.inputs, [layer.input for layer in layers])
    inputs = probe(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), training=False)
    pre = []
    for layer, t in zip(layers, inputs, strict=True):
        p = layer.input_quantizer(t, stage="preprocess").numpy()
        perm = _flatten_perm(layer) if p.ndim == 2 else None
        if p.ndim == 4:
            p = p.transpose(0, 3, 1, 2)
        p = p.reshape(len(p), -1)
        if perm is not None:
            aligned = np.empty_like(p)
            aligned[:, perm] = p
            p = aligned
        pre.append(p)
    return predict(km, x), pre


def _compare(arch_name: str, binarizer: str, pad_value: float, batch: int = 4) -> None:
    arch = arch_spec(arch_name, pad_value=pad_value)
    torch.manual_seed(0)
    tm = build_torch_model(arch, get(binarizer))
    _randomize_bn(tm, 1)
    tm.eval()
    c, h, w = arch["kwargs"]["input_shape"]
    x = np.random.default_rng(2).standard_normal((batch, c, h, w)).astype(np.float32)
    km = build_larq_model(arch, get(binarizer))
    load_torch_state_into_larq(km, torch_state(tm))
    assert [layer.name for layer in binary_layers(km)] == [
        n.replace(".", "_") for n, _ in torch_binary_layers(tm)
    ]
    want, torch_pre = _torch_pre_sign(tm, x)
    got, larq_pre = _larq_pre_sign(km, x)
    tol = LOGIT_RTOL * (np.abs(want).max() + 1)
    if not get(binarizer).binary:  # the float baseline: no sign to flip
        np.testing.assert_allclose(got, want, rtol=0, atol=tol)
        return
    assert len(torch_pre) == len(larq_pre) == len(torch_binary_layers(tm))
    diverged = np.zeros(batch, dtype=bool)
    for (name, _), lp in zip(torch_binary_layers(tm), larq_pre, strict=True):
        tp = torch_pre[name]
        assert lp.shape == tp.shape, name
        margin = SIGN_RTOL * np.abs(tp).max(axis=1, keepdims=True)
        live = ~diverged[:, None]
        far = np.argwhere(live & (np.abs(lp - tp) > margin))
        assert not far.size, (
            f"{name}: sample {far[0][0]}: {lp[tuple(far[0])]} != {tp[tuple(far[0])]}"
        )
        flips = live & ((lp >= 0) != (tp >= 0))
        assert not (flips & ((np.abs(lp) > margin) | (np.abs(tp) > margin))).any(), name
        diverged |= flips.any(axis=1)
    kept = ~diverged
    assert kept.sum() >= batch / 2, f"{int(kept.sum())} of {batch} samples without a flip"
    np.testing.assert_allclose(got[kept], want[kept], rtol=0, atol=tol)


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
    _compare("resnet20", binarizer, pad_value)


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
