"""Cross-framework parity of every binarizer: the same latent weights in a PyTorch
binary layer and the Larq layer give identical bits, matching outputs and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("larq")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from bnn_export.binarizers import REGISTRY, get  # noqa: E402
from bnn_export.binarizers import larq_impl as lz  # noqa: E402
from bnn_export.models.larq_build import export_layer, set_schedule  # noqa: E402
from bnn_export.models.larq_zoo import binary_conv, binary_dense  # noqa: E402
from bnn_export.models.layers import BinaryConv2d, BinaryLinear  # noqa: E402
from bnn_export.models.torch_to_larq import load_torch_state_into_larq  # noqa: E402
from bnn_export.train_torch import set_schedule as torch_set_schedule  # noqa: E402

pytestmark = pytest.mark.larq

BINARY = [n for n, info in REGISTRY.items() if info.binary]
#: (in, out, stride, pad_value); channel counts deliberately not multiples of 32/64
CONV_CASES = [(3, 33, 1, 1.0), (33, 70, 2, 0.0), (70, 3, 2, 1.0)]


def test_every_registered_binarizer_has_a_larq_implementation() -> None:
    assert set(lz.WEIGHT_QUANTIZERS) == set(REGISTRY) == set(lz.ACTIVATION_QUANTIZERS)


#: Binarizers whose bits depend on the raw latent values only (sign, sort): exact ties
#: must break identically. The others take per-channel float statistics first (mean,
#: std), whose float32 rounding differs between frameworks, so an exact tie there
#: (w == mean_o) is not reproducible; they get continuous weights with exact zeros.
RAW_VALUE_BINARIZERS = {"ste", "equal_bits"}


def _coarse(x: torch.Tensor) -> torch.Tensor:
    """Values on a 0.05 grid: ties and exact zeros exercise the tie-break and sign(0)."""
    return torch.round(x * 20) / 20


def _latent(w: torch.Tensor, name: str) -> torch.Tensor:
    if name in RAW_VALUE_BINARIZERS:
        return _coarse(w * 3)
    w = w * 3
    w.view(-1)[:: max(1, w.numel() // 5)] = 0.0
    return w


def _pair(name: str, kind: str, case: tuple[int, int, int, float], seed: int):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    config = get(name)
    c_in, c_out, stride, pad = case
    if kind == "conv":
        tl: torch.nn.Module = BinaryConv2d(
            c_in, c_out, 3, stride=stride, padding=1, binarizer=config, pad_value=pad
        )
        x_np = _coarse(torch.randn(2, c_in, 7, 6)).numpy()
        inp = keras.Input((7, 6, c_in))
        out = binary_conv(inp, c_out, "layer", binarizer=config, pad_value=pad, stride=stride)
    else:
        tl = BinaryLinear(c_in, c_out, binarizer=config)
        x_np = _coarse(torch.randn(4, c_in)).numpy()
        inp = keras.Input((c_in,))
        out = binary_dense(inp, c_out, "layer", binarizer=config)
    with torch.no_grad():
        tl.weight.copy_(_latent(tl.weight.clone(), name))
        for pname, p in tl.named_parameters():  # non-trivial binarizer parameters
            if pname != "weight":
                p.copy_(torch.randn_like(p) * 0.5)
    km = keras.Model(inp, out)
    torch_set_schedule(tl, 3, 10)
    tl.train()
    tl(torch.from_numpy(x_np))  # lazy initializations (SiMaN's alpha) happen here
    state = {f"layer.{k}": v.detach().numpy() for k, v in tl.state_dict().items()}
    load_torch_state_into_larq(km, state)
    set_schedule(km, 3, 10)
    return tl, km, x_np


def _nhwc(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize(
    "kind, case", [("conv", c) for c in CONV_CASES] + [("dense", (70, 33, 1, 1.0))]
)
def test_bits_outputs_and_gradients_match_pytorch(name: str, kind: str, case: tuple) -> None:  # type: ignore[type-arg]
    tl, km, x_np = _pair(name, kind, case, seed=len(name) + case[0])
    layer = km.get_layer("layer")

    # identical bits and scale
    t_exp = tl.export_weights()
    k_exp = export_layer(layer)
    assert k_exp.bits.dtype == np.int8 and k_exp.bits.shape == t_exp.bits.shape
    np.testing.assert_array_equal(k_exp.bits, t_exp.bits)
    assert set(np.unique(k_exp.bits)) <= {-1, 1}
    np.testing.assert_allclose(k_exp.scale, t_exp.scale, rtol=1e-5)
    assert k_exp.notes.keys() == t_exp.notes.keys()
    kernel_np = layer.kernel.latent_variable.numpy()
    if kind == "dense":
        kernel_np = kernel_np.reshape(kernel_np.shape[-2:])
    t_score = tl.weight_quantizer.score(tl.weight).numpy()
    np.testing.assert_allclose(
        layer.kernel_quantizer.score(kernel_np), t_score, atol=1e-5 * (np.abs(t_score).max() + 1)
    )

    # matching outputs and gradients (training mode: gwt's differentiable transform)
    x_t = torch.from_numpy(x_np).requires_grad_(True)
    tl.train()
    y_t = tl(x_t)
    g = np.random.default_rng(0).standard_normal(tuple(y_t.shape)).astype(np.float32)
    (y_t * torch.from_numpy(g)).sum().backward()

    x_k = tf.constant(_nhwc(x_np))
    kernel = layer.kernel.latent_variable
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x_k)
        y_k = km(x_k, training=True)
        loss = tf.reduce_sum(y_k * tf.constant(_nhwc(g)))
    y_scale = float(np.abs(y_t.detach().numpy()).max()) + 1.0
    np.testing.assert_allclose(y_k.numpy(), _nhwc(y_t.detach().numpy()), atol=1e-4 * y_scale)

    assert x_t.grad is not None and tl.weight.grad is not None
    gx = tape.gradient(loss, x_k).numpy()
    np.testing.assert_allclose(gx, _nhwc(x_t.grad.numpy()), atol=1e-4 * (np.abs(gx).max() + 1))
    gw = lz.to_torch_layout(
        np.asarray(tape.gradient(loss, kernel)).squeeze()
        if kind == "dense"
        else np.asarray(tape.gradient(loss, kernel))
    )
    gw_t = tl.weight.grad.numpy()
    np.testing.assert_allclose(gw, gw_t, atol=1e-4 * (np.abs(gw_t).max() + 1))
    assert np.abs(gw_t).max() > 0  # the gradient reaches the latent weights

    # binarizer parameters (SiMaN alpha, SD-BNN alpha / SE weights / beta)
    for q_attr, t_attr in (
        ("kernel_quantizer", "weight_quantizer"),
        ("input_quantizer", "input_quantizer"),
    ):
        quantizer = getattr(layer, q_attr)
        for pname, var in quantizer.torch_params().items():
            t_param = dict(getattr(tl, t_attr).named_parameters()).get(pname)
            if t_param is None or not var.trainable:
                continue
            assert t_param.grad is not None
            gk = tape.gradient(loss, var).numpy()
            np.testing.assert_allclose(gk, t_param.grad.numpy(), atol=1e-4 * (np.abs(gk).max() + 1))


@pytest.mark.parametrize("name", BINARY)
def test_activation_export_matches_pytorch(name: str) -> None:
    tl, km, _ = _pair(name, "conv", CONV_CASES[1], seed=7)
    t_exp = tl.input_quantizer.export()
    k_exp = km.get_layer("layer").input_quantizer.export()
    assert k_exp.kind == t_exp.kind
    for field in ("threshold", "se_w1", "se_w2"):
        a, b = getattr(k_exp, field), getattr(t_exp, field)
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-6)


def test_equal_bits_ratio_and_pruning() -> None:
    kernel = tf.constant(np.random.default_rng(0).standard_normal((3, 3, 33, 70)), tf.float32)
    q = lz.weight_quantizer(get("equal_bits", bit_ratio=0.3))
    ratios = q.export(kernel).ratio_per_channel()
    np.testing.assert_allclose(ratios, np.floor(0.3 * 297 + 0.5) / 297)
    pruned = lz.weight_quantizer(get("equal_bits", prune_rate=0.5)).export(kernel)
    flat = pruned.bits.reshape(70, -1)
    assert pruned.ternary
    n = flat.shape[1]  # 297: the documented formula gives 74 (-1) and 75 (+1) here
    assert ((flat == -1).sum(1) == np.floor(0.25 * n)).all()
    assert ((flat == 1).sum(1) == n - np.floor(0.75 * n)).all()


def test_zero_latent_weight_binarizes_to_plus_one() -> None:
    q = lz.weight_quantizer(get("ste"))
    bits = q.export(np.zeros((1, 1, 3, 2), np.float32)).bits
    assert bits.shape == (2, 3, 1, 1) and (bits == 1).all()


def test_quantizers_serialize_by_config() -> None:
    for name in REGISTRY:
        q = lz.weight_quantizer(get(name))
        revived = keras.utils.deserialize_keras_object(keras.utils.serialize_keras_object(q))
        assert type(revived) is type(q) and revived.config_ == q.config_


def test_unknown_larq_binarizer_is_a_clear_error() -> None:
    from bnn_export.binarizers import BinarizerConfig
    from bnn_export.errors import BnnExportError

    with pytest.raises(BnnExportError, match="no Larq implementation"):
        lz.weight_quantizer(BinarizerConfig("xnor", {}))


@pytest.mark.parametrize("epoch", [0, 5, 9])
def test_siman_clipping_updates_the_latent_weights_alike(epoch: int) -> None:
    """SiMaN's training forward writes the clipped weights back in both frameworks (the
    PyTorch parameter in place, the Larq latent variable by assignment); inference writes
    nothing."""
    tl, km, x_np = _pair("siman", "conv", CONV_CASES[1], seed=11)
    layer = km.get_layer("layer")
    layer.kernel_quantizer.bind_latent(layer.kernel.latent_variable)  # build_larq_model does it
    torch_set_schedule(tl, epoch, 10)
    set_schedule(km, epoch, 10)
    with torch.no_grad():  # latent weights far from clipped: a fresh draw
        tl.weight.copy_(torch.randn_like(tl.weight) * 0.1 + 0.01)
    layer.kernel.latent_variable.assign(lz.from_torch_layout(tl.weight.detach().numpy()))
    before = tl.weight.detach().clone()
    tl.eval()
    km(tf.constant(_nhwc(x_np)), training=False)
    with torch.no_grad():
        tl(torch.from_numpy(x_np))
    assert torch.equal(tl.weight.detach(), before)
    np.testing.assert_array_equal(
        lz.to_torch_layout(layer.kernel.latent_variable.numpy()), before.numpy()
    )
    tl.train()
    tl(torch.from_numpy(x_np))
    km(tf.constant(_nhwc(x_np)), training=True)
    after = tl.weight.detach().numpy()
    assert np.abs(after - before.numpy()).max() > 1e-3  # centred and clamped
    np.testing.assert_allclose(
        lz.to_torch_layout(layer.kernel.latent_variable.numpy()), after, atol=1e-6
    )
    np.testing.assert_array_equal(export_layer(layer).bits, tl.export_weights().bits)
