"""Every binarizer against an independent numpy implementation of its paper's formulas
(with the official code's conventions where the paper leaves them open), forward and
gradients, at the start, middle and end of the schedule (epochs 0, E/2 and E - 1).

The numpy side is written from the formulas, not from the package: percentiles come
from ``np.percentile``, ranks from a stable ``np.argsort``, and the gradients of the
standardizations from central finite differences in float64 (so no hand-derived
Jacobian is shared with the implementations under test).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from bnn_export.binarizers import get
from bnn_export.binarizers import torch_impl as bz

E = 10
EPOCHS = [0, E // 2, E - 1]

# --- numpy reference ------------------------------------------------------------------


def np_sign(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, 1.0, -1.0)


def np_ede(epoch: int, epochs: int, t_min: float, t_max: float) -> tuple[float, float]:
    """IR-Net eq. (EDE): t = T_min * 10^(e/E * log10(T_max/T_min)), k = max(1/t, 1)."""
    t = t_min * 10 ** (epoch / epochs * math.log10(t_max / t_min))
    return t, max(1 / t, 1.0)


def np_standardize(w: np.ndarray, ddof: int, eps: float = 0.0) -> np.ndarray:
    """Per output channel (rows of w.reshape(O, -1)): (w - mean) / sqrt(var + eps)."""
    flat = w.reshape(w.shape[0], -1).astype(np.float64)
    c = flat - flat.mean(axis=1, keepdims=True)
    var = (c**2).sum(axis=1, keepdims=True) / (flat.shape[1] - ddof)
    return (c / np.sqrt(var + eps)).reshape(w.shape)


def np_vjp(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """g^T J_f(x) by central finite differences in float64."""
    x = x.astype(np.float64)
    out = np.zeros_like(x)
    h = 1e-6
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        out[i] = ((f(xp) - f(xm)) * g).sum() / (2 * h)
    return out


def np_siman_clip(w: np.ndarray, p: float) -> np.ndarray:
    """SiMaN's update of the latent weights: centre each output channel, clamp the
    magnitudes to the layer's [p, 100 - p] percentiles (np.percentile, linear)."""
    flat = w.reshape(w.shape[0], -1).astype(np.float64)
    c = (flat - flat.mean(axis=1, keepdims=True)).reshape(w.shape)
    lo, hi = np.percentile(np.abs(c), p), np.percentile(np.abs(c), 100 - p)
    return np.clip(np.abs(c), lo, hi) * np.sign(c)


def np_siman_bits(wc: np.ndarray) -> np.ndarray:
    """B = 1 for the floor(n/2) largest |standardized| weights of each channel (ties: the
    later position wins), the rest 0."""
    x = np.abs(np_standardize(wc, ddof=1, eps=1e-5)).reshape(wc.shape[0], -1)
    n = x.shape[1]
    ranks = np.argsort(np.argsort(x, axis=1, kind="stable"), axis=1, kind="stable")
    return (ranks >= n - n // 2).astype(np.float64).reshape(wc.shape)


def np_siman_activation_grad(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """SiMaN's activation backward: a1 = (a - mean)/sqrt(var + 1e-5) per sample (var over
    n - 1); clamp(2 - 2|a1|, 0) at a1, back through the standardization."""

    def a1(v: np.ndarray) -> np.ndarray:
        return np_standardize(v, ddof=1, eps=1e-5)

    return np_vjp(a1, x, g * np.maximum(2 - 2 * np.abs(a1(x)), 0))


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _wq(name: str, shape: tuple[int, ...], **params: object) -> bz.WeightQuantizer:
    return bz.weight_quantizer(get(name, **params), shape)


def _weight_grad(
    q: torch.nn.Module, w_np: np.ndarray, g_np: np.ndarray, *, train: bool = True
) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    w = torch.nn.Parameter(torch.from_numpy(w_np.astype(np.float32)))
    q.train(train)
    out = q(w)
    (out * torch.from_numpy(g_np.astype(np.float32))).sum().backward()
    assert w.grad is not None
    return out.detach().numpy(), w.grad.numpy(), w


# --- schedules ------------------------------------------------------------------------


@pytest.mark.parametrize("epoch", EPOCHS)
def test_schedules_at_start_middle_end(epoch: int) -> None:
    for name in ("irnet", "sdbnn"):
        q = _wq(name, (2, 3))
        q.set_schedule(epoch, E)
        t, k = np_ede(epoch, E, 0.1, 10.0)
        assert float(q.ede_t) == pytest.approx(t, rel=1e-6)
        assert float(q.ede_k) == pytest.approx(k, rel=1e-6)
    siman = _wq("siman", (2, 3))
    siman.set_schedule(epoch, E)
    assert float(siman.clip_percent) == pytest.approx(15 * (1 - epoch / E), rel=1e-6)
    gwt = _wq("gwt", (2, 3))
    gwt.set_schedule(epoch, E)
    assert float(gwt.beta) == pytest.approx(1.0 * 100.0 ** (epoch / (E - 1)), rel=1e-6)


# --- ste ----------------------------------------------------------------------------------


def test_ste_forward_and_clipped_gradient() -> None:
    w = _rng(0).standard_normal((3, 8)) * 1.5
    g = _rng(1).standard_normal(w.shape)
    out, grad, _ = _weight_grad(_wq("ste", w.shape), w, g)
    np.testing.assert_array_equal(out, np_sign(w))
    np.testing.assert_allclose(grad, g * (np.abs(w) <= 1), rtol=1e-6)


# --- irnet ----------------------------------------------------------------------------


@pytest.mark.parametrize("epoch", EPOCHS)
def test_irnet_weights_unbiased_std_ede(epoch: int) -> None:
    shape = (4, 8, 3, 3)  # n = 72: population vs unbiased std differ by ~0.7%
    w = _rng(epoch).standard_normal(shape) * 0.1 + 0.02
    g = _rng(epoch + 100).standard_normal(shape)
    t, k = np_ede(epoch, E, 0.1, 10.0)
    w_hat = np_standardize(w, ddof=1)
    mean_abs = np.abs(w_hat).reshape(4, -1).mean(axis=1)
    scale = 2.0 ** np.round(np.log2(mean_abs))
    want = np_sign(w_hat) * scale.reshape(-1, 1, 1, 1)

    q = _wq("irnet", shape)
    q.set_schedule(epoch, E)
    out, grad, wt = _weight_grad(q, w, g)
    np.testing.assert_array_equal(out, want.astype(np.float32))
    ex = q.export(wt)
    np.testing.assert_array_equal(ex.bits, np_sign(w_hat))
    np.testing.assert_array_equal(ex.scale, scale.astype(np.float32))

    def ede_of(std: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        local = g * scale.reshape(-1, 1, 1, 1) * k * t * (1 - np.tanh(t * std(w)) ** 2)
        return np_vjp(std, w, local)

    want_grad = ede_of(lambda v: np_standardize(v, ddof=1))
    np.testing.assert_allclose(grad, want_grad, rtol=2e-4, atol=2e-4 * np.abs(want_grad).max())
    population = ede_of(lambda v: np_standardize(v, ddof=0))
    # the population std (the old convention) is measurably off: ~0.7% at t ~ 0
    off = np.linalg.norm(population - want_grad) / np.linalg.norm(want_grad)
    assert off > 1e-3 and not np.allclose(grad, population, rtol=2e-4, atol=0)


@pytest.mark.parametrize("epoch", EPOCHS)
def test_irnet_activation_ede(epoch: int) -> None:
    x = _rng(3).standard_normal((2, 3, 4, 4)) * 2
    g = _rng(4).standard_normal(x.shape)
    t, k = np_ede(epoch, E, 0.1, 10.0)
    act = bz.activation_quantizer(get("irnet"), 3)
    act.set_schedule(epoch, E)
    xt = torch.from_numpy(x.astype(np.float32)).requires_grad_(True)
    out = act(xt)
    (out * torch.from_numpy(g.astype(np.float32))).sum().backward()
    np.testing.assert_array_equal(out.detach().numpy(), np_sign(x))
    assert xt.grad is not None
    want = g * k * t * (1 - np.tanh(t * x) ** 2)
    np.testing.assert_allclose(xt.grad.numpy(), want, rtol=1e-4, atol=1e-6)


# --- siman ----------------------------------------------------------------------------


def _siman_layer(seed: int) -> np.ndarray:
    """A conv layer's latent weights: 16 channels of 8x3x3, channel scales varying."""
    rng = _rng(seed)
    scales = np.exp(rng.normal(0, 0.3, size=(16, 1, 1, 1)))
    return rng.standard_normal((16, 8, 3, 3)) * 0.05 * scales + rng.normal(0, 0.01, (16, 1, 1, 1))


@pytest.mark.parametrize("epoch", EPOCHS)
def test_siman_weights_clipping_bits_gradient_and_in_place_update(epoch: int) -> None:
    w = _siman_layer(epoch)
    g = _rng(epoch + 7).standard_normal(w.shape)
    q = _wq("siman", w.shape)
    q.set_schedule(epoch, E)
    p = float(np.float32(15 * (1 - epoch / E)))
    wc = np_siman_clip(w, p)
    bits = np_siman_bits(wc)
    alpha = np.abs(w).reshape(16, -1).mean(axis=1).reshape(-1, 1, 1, 1)
    out, grad, wt = _weight_grad(q, w, g)
    # forward: alpha * (2B - 1), alpha initialized from the unclipped weights
    np.testing.assert_allclose(q.alpha.detach().numpy(), alpha.ravel(), rtol=1e-6)
    np.testing.assert_allclose(out, alpha * (2 * bits - 1), rtol=1e-6)
    # the training forward wrote the clipped weights into the parameter
    np.testing.assert_allclose(wt.detach().numpy(), wc, rtol=1e-5, atol=1e-7)
    # gradient: identity STE on X = |standardized clipped weights|, times alpha
    x_of = lambda v: np.abs(np_standardize(v, ddof=1, eps=1e-5))  # noqa: E731
    want = np_vjp(x_of, wc, g * alpha)
    np.testing.assert_allclose(grad, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
    assert q.alpha.grad is not None
    want_alpha = (g * (2 * bits - 1)).reshape(16, -1).sum(axis=1)
    np.testing.assert_allclose(q.alpha.grad.numpy(), want_alpha, rtol=1e-5, atol=1e-5)
    # evaluation and export give the trained model's bits and write nothing
    q.eval()
    before = wt.detach().clone()
    with torch.no_grad():
        np.testing.assert_allclose(q(wt).numpy(), out, rtol=1e-6)
    assert torch.equal(wt.detach(), before)
    np.testing.assert_array_equal(q.export(wt).bits, (2 * bits - 1).astype(np.int8))


def test_siman_clipping_flips_bits_and_zero_switches_it_off() -> None:
    """At p = 15 the clipping changes about 1% of a layer's bits; p = 0 is the old rule."""
    w = _siman_layer(42)
    clipped = np_siman_bits(np_siman_clip(w, 15.0))
    plain = np_siman_bits(w)
    flipped = float((clipped != plain).mean())
    assert 0.002 < flipped < 0.05
    q = _wq("siman", w.shape)
    wt = torch.from_numpy(w.astype(np.float32))
    q.set_schedule(0, E)  # p = 15
    np.testing.assert_array_equal(q.export(wt).bits, (2 * clipped - 1).astype(np.int8))
    off = _wq("siman", w.shape, clip_percent=0.0)
    off.set_schedule(0, E)
    assert float(off.clip_percent) == 0.0
    np.testing.assert_array_equal(off.export(wt).bits, (2 * plain - 1).astype(np.int8))


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (3, 70)])
def test_siman_activation_sign_and_standardized_triangle_gradient(shape: tuple) -> None:  # type: ignore[type-arg]
    x = _rng(5).standard_normal(shape) * 1.3 + 0.4
    g = _rng(6).standard_normal(shape)
    act = bz.activation_quantizer(get("siman"), shape[1])
    xt = torch.from_numpy(x.astype(np.float32)).requires_grad_(True)
    out = act(xt)
    (out * torch.from_numpy(g.astype(np.float32))).sum().backward()
    centred = x - x.reshape(shape[0], -1).mean(axis=1).reshape(-1, *[1] * (len(shape) - 1))
    np.testing.assert_array_equal(out.detach().numpy(), np_sign(centred))
    want = np_siman_activation_grad(x, g)
    assert xt.grad is not None
    np.testing.assert_allclose(xt.grad.numpy(), want, rtol=1e-3, atol=1e-4 * np.abs(want).max())
    box = g * (np.abs(centred) <= 1)  # the old estimator: clearly different
    assert np.abs(box - want).sum() > 0.2 * np.abs(want).sum()


def test_siman_alpha_and_latent_weights_get_no_weight_decay() -> None:
    from bnn_export.models import arch_spec
    from bnn_export.models.torch_build import build_torch_model
    from bnn_export.train_torch import _param_groups

    model = build_torch_model(arch_spec("digits"), get("siman"))
    decayed, free = _param_groups(model, 5e-4)
    assert decayed["weight_decay"] == 5e-4 and free["weight_decay"] == 0.0
    free_ids = {id(p) for p in free["params"]}
    quantizers = [m for m in model.modules() if isinstance(m, bz.SimanWeight)]
    assert quantizers
    for q in quantizers:
        assert id(q.alpha) in free_ids
    assert len(free_ids) == 2 * len(quantizers)  # latent weights and alphas, nothing else
    ste = build_torch_model(arch_spec("digits"), get("ste"))
    assert not _param_groups(ste, 5e-4)[1]["params"]


def test_siman_state_without_clip_percent_loads_with_clipping_off() -> None:
    q = _wq("siman", (4, 9))
    q.set_schedule(0, E)
    state = {k: v for k, v in q.state_dict().items() if k != "clip_percent"}
    q.load_state_dict(state)  # strict: a checkpoint from before clipping existed
    assert float(q.clip_percent) == 0.0


# --- equal_bits -------------------------------------------------------------------------


@pytest.mark.parametrize("epoch", EPOCHS)
@pytest.mark.parametrize("params", [{}, {"bit_ratio": 0.3}, {"prune_rate": 0.5}])
def test_equal_bits_sort_scale_and_gradient(epoch: int, params: dict) -> None:  # type: ignore[type-arg]
    w = _rng(8).standard_normal((5, 4, 3, 3))
    g = _rng(9).standard_normal(w.shape)
    flat = w.reshape(5, -1)
    n = flat.shape[1]
    ranks = np.argsort(np.argsort(flat, axis=1, kind="stable"), axis=1, kind="stable")
    k = params.get("prune_rate", 0.0)
    if k:  # the official CIFAR-10 default ("halfmask", rate 0.5)
        low, high = math.floor((1 - k) / 2 * n), math.floor((1 + k) / 2 * n)
        bits = np.where(ranks < low, -1.0, np.where(ranks >= high, 1.0, 0.0))
    else:
        top = math.floor(params.get("bit_ratio", 0.5) * n + 0.5)
        bits = np.where(ranks >= n - top, 1.0, -1.0)
    scale = math.sqrt(2 / 36)
    q = _wq("equal_bits", w.shape, **params)
    q.set_schedule(epoch, E)  # no schedule: nothing changes
    out, grad, _ = _weight_grad(q, w, g)
    np.testing.assert_allclose(out, (bits * scale).reshape(w.shape), rtol=1e-6)
    np.testing.assert_allclose(grad, g * scale, rtol=1e-6)


# --- sdbnn -------------------------------------------------------------------------------


@pytest.mark.parametrize("epoch", EPOCHS)
def test_sdbnn_weight_shift_and_ede(epoch: int) -> None:
    w = _rng(10).standard_normal((3, 2, 3, 3)) * 0.1
    g = _rng(11).standard_normal(w.shape)
    a = np.array([0.3, -1.0, 2.0])
    t, k = np_ede(epoch, E, 0.1, 10.0)
    q = _wq("sdbnn", w.shape)
    with torch.no_grad():
        q.alpha.copy_(torch.from_numpy(a.astype(np.float32)))
    q.set_schedule(epoch, E)
    mean = w.reshape(3, -1).mean(axis=1)
    sig = 1 / (1 + np.exp(-a))
    shifted = w + (sig * 0.01 * mean).reshape(-1, 1, 1, 1)
    out, grad, _ = _weight_grad(q, w, g)
    np.testing.assert_array_equal(out, np_sign(shifted))
    ede = g * k * t * (1 - np.tanh(t * shifted) ** 2)
    np.testing.assert_allclose(grad, ede, rtol=1e-4, atol=1e-6)  # the mean is detached
    assert q.alpha.grad is not None
    want_alpha = (ede.reshape(3, -1).sum(axis=1)) * sig * (1 - sig) * 0.01 * mean
    np.testing.assert_allclose(q.alpha.grad.numpy(), want_alpha, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("epoch", EPOCHS)
def test_sdbnn_static_activation_threshold_and_ede(epoch: int) -> None:
    x = _rng(12).standard_normal((2, 3, 4, 4))
    g = _rng(13).standard_normal(x.shape)
    beta = np.array([0.5, -2.0, 1.0])
    t, k = np_ede(epoch, E, 0.1, 10.0)
    act = bz.activation_quantizer(get("sdbnn", activation="static"), 3)
    with torch.no_grad():
        act.beta.copy_(torch.from_numpy(beta.astype(np.float32)))
    act.set_schedule(epoch, E)
    xt = torch.from_numpy(x.astype(np.float32)).requires_grad_(True)
    out = act(xt)
    (out * torch.from_numpy(g.astype(np.float32))).sum().backward()
    shifted = x + (1 / (1 + np.exp(-beta))).reshape(1, 3, 1, 1)
    np.testing.assert_array_equal(out.detach().numpy(), np_sign(shifted))
    assert xt.grad is not None
    want = g * k * t * (1 - np.tanh(t * shifted) ** 2)
    np.testing.assert_allclose(xt.grad.numpy(), want, rtol=1e-4, atol=1e-6)


# --- gwt ---------------------------------------------------------------------------------


@pytest.mark.parametrize("epoch", EPOCHS)
def test_gwt_tanh_transform_and_exact_gradient(epoch: int) -> None:
    w = _rng(14).standard_normal((3, 12)) * 0.2
    g = _rng(15).standard_normal(w.shape)
    beta = 1.0 * 100.0 ** (epoch / (E - 1))
    q = _wq("gwt", w.shape)
    q.set_schedule(epoch, E)

    def soft(v: np.ndarray) -> np.ndarray:  # GWT has no official code: population std
        return np.tanh(beta * np_standardize(v, ddof=0))

    out, grad, wt = _weight_grad(q, w, g)
    np.testing.assert_allclose(out, soft(w), rtol=1e-4, atol=1e-5)
    want = np_vjp(soft, w, g)
    np.testing.assert_allclose(grad, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())
    q.eval()
    with torch.no_grad():
        np.testing.assert_array_equal(q(wt).numpy(), np_sign(w - w.mean(1, keepdims=True)))


# --- Larq: the same formulas -------------------------------------------------------------


@pytest.mark.larq
@pytest.mark.parametrize("epoch", EPOCHS)
def test_larq_siman_and_irnet_match_the_formulas(epoch: int) -> None:
    pytest.importorskip("larq")
    import tensorflow as tf

    from bnn_export.binarizers import larq_impl as lz

    w = _siman_layer(epoch)  # [O, I, kh, kw]
    g = _rng(epoch + 7).standard_normal(w.shape)
    kernel = tf.Variable(lz.from_torch_layout(w.astype(np.float32)))
    q = lz.weight_quantizer(get("siman"))
    q.build(kernel.shape)
    q.init_from_kernel(kernel.numpy())
    q.bind_latent(kernel)
    q.set_schedule(epoch, E)
    wc = np_siman_clip(w, float(np.float32(15 * (1 - epoch / E))))
    bits = np_siman_bits(wc)
    alpha = np.abs(w).reshape(16, -1).mean(axis=1).reshape(-1, 1, 1, 1)
    with tf.GradientTape() as tape:
        out = q(kernel, training=True)
        loss = tf.reduce_sum(out * lz.from_torch_layout(g.astype(np.float32)))
    grad = lz.to_torch_layout(tape.gradient(loss, kernel).numpy())
    np.testing.assert_allclose(lz.to_torch_layout(out.numpy()), alpha * (2 * bits - 1), rtol=1e-6)
    x_of = lambda v: np.abs(np_standardize(v, ddof=1, eps=1e-5))  # noqa: E731
    want = np_vjp(x_of, wc, g * alpha)
    np.testing.assert_allclose(grad, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
    # the training forward assigned the clipped kernel; inference writes nothing
    after = lz.to_torch_layout(kernel.numpy())
    np.testing.assert_allclose(after, wc, rtol=1e-5, atol=1e-7)
    q(kernel + 1.0, training=False)
    np.testing.assert_array_equal(lz.to_torch_layout(kernel.numpy()), after)
    np.testing.assert_array_equal(q.export(kernel.numpy()).bits, (2 * bits - 1).astype(np.int8))
    assert q.no_weight_decay and q.no_weight_decay_parameters() == [q.alpha]

    # SiMaN's activation: sign of the centred input, standardized triangle gradient
    x = _rng(5).standard_normal((2, 4, 4, 3)) * 1.3 + 0.4  # NHWC
    gx = _rng(6).standard_normal(x.shape)
    act = lz.activation_quantizer(get("siman"))
    xt = tf.constant(x.astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = act(xt)
        loss = tf.reduce_sum(y * gx.astype(np.float32))
    want_x = np_siman_activation_grad(x, gx)
    got_x = tape.gradient(loss, xt).numpy()
    np.testing.assert_allclose(got_x, want_x, rtol=1e-3, atol=1e-4 * np.abs(want_x).max())

    # IR-Net: unbiased std
    ir = lz.weight_quantizer(get("irnet"))
    ir.build(kernel.shape)
    ir.set_schedule(epoch, E)
    t, k = np_ede(epoch, E, 0.1, 10.0)
    w2 = _rng(epoch).standard_normal((4, 8, 3, 3)) * 0.1 + 0.02
    k2 = tf.Variable(lz.from_torch_layout(w2.astype(np.float32)))
    g2 = _rng(epoch + 100).standard_normal(w2.shape)
    w_hat = np_standardize(w2, ddof=1)
    scale = (2.0 ** np.round(np.log2(np.abs(w_hat).reshape(4, -1).mean(axis=1)))).reshape(
        -1, 1, 1, 1
    )
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(ir(k2) * lz.from_torch_layout(g2.astype(np.float32)))
    got = lz.to_torch_layout(tape.gradient(loss, k2).numpy())

    def std1(v: np.ndarray) -> np.ndarray:
        return np_standardize(v, ddof=1)

    want2 = np_vjp(std1, w2, g2 * scale * k * t * (1 - np.tanh(t * w_hat) ** 2))
    np.testing.assert_allclose(got, want2, rtol=2e-4, atol=2e-4 * np.abs(want2).max())


@pytest.mark.larq
def test_larq_siman_alpha_gets_no_weight_decay() -> None:
    pytest.importorskip("larq")
    from bnn_export.models import arch_spec
    from bnn_export.models.larq_build import binary_layers, build_larq_model
    from bnn_export.train_larq import decayed_variables

    model = build_larq_model(arch_spec("digits"), get("siman"))
    decayed = {id(v) for v in decayed_variables(model)}
    for layer in binary_layers(model):
        assert id(layer.kernel_quantizer.alpha) not in decayed
        assert id(layer.kernel.latent_variable) not in decayed
        assert layer.kernel_quantizer._latent is layer.kernel.latent_variable
