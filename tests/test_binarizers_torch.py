"""PyTorch binarizers against hand-computed values, and export == forward for all."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bnn_export import binarizers
from bnn_export.binarizers import ede_schedule, get
from bnn_export.binarizers import torch_impl as bz
from bnn_export.binarizers.exports import ActivationExport
from bnn_export.errors import BnnExportError
from bnn_export.models.layers import BinaryConv2d, BinaryLinear

BINARY = [n for n in binarizers.names() if n != "none"]


def _wq(name: str, w: torch.Tensor, **params: object) -> bz.WeightQuantizer:
    return bz.weight_quantizer(get(name, **params), tuple(w.shape))


def test_registry_lists_the_six_and_float() -> None:
    assert set(binarizers.names()) == {
        "none",
        "ste",
        "irnet",
        "siman",
        "equal_bits",
        "sdbnn",
        "gwt",
    }
    assert set(bz.WEIGHT_QUANTIZERS) == set(binarizers.names())
    assert set(bz.ACTIVATION_QUANTIZERS) == set(binarizers.names())


def test_ste_bits_and_clipped_gradient() -> None:
    w = torch.tensor([[0.5, -2.0, 0.0]], requires_grad=True)
    q = _wq("ste", w)
    q(w).sum().backward()
    assert q.export(w).bits.tolist() == [[1, -1, 1]]
    assert w.grad is not None and w.grad.tolist() == [[1.0, 0.0, 1.0]]


def test_irnet_standardizes_and_uses_power_of_two_scale() -> None:
    w = torch.zeros(2, 64)
    w[0, :4] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    w[0, 4:] = 2.5  # channel 0: mean 2.5
    w[1, 7] = 1.0  # channel 1: one 1 among 63 zeros -> mean|w_hat| = 2*sqrt(63)/64 = 0.248
    ex = _wq("irnet", w).export(w)
    assert ex.bits[0, :4].tolist() == [-1, -1, 1, 1] and (ex.bits[0, 4:] == 1).all()
    assert ex.bits[1, 7] == 1 and (np.delete(ex.bits[1], 7) == -1).all()
    # channel 0: mean|w_hat| = 4 * 1.342 / 64 * sqrt(64/5)... -> 2^round(log2(.)) computed by hand:
    w_hat0 = (w[0] - w[0].mean()) / w[0].std(correction=1)  # unbiased, as the official code
    assert ex.scale[0] == 2.0 ** round(math.log2(float(w_hat0.abs().mean())))
    assert ex.scale[1] == 0.25


def test_ede_schedule_values_and_gradient() -> None:
    assert ede_schedule(0, 10, 0.1, 10.0) == pytest.approx((0.1, 10.0))
    assert ede_schedule(5, 10, 0.1, 10.0) == pytest.approx((1.0, 1.0))
    assert ede_schedule(9, 10, 0.1, 10.0) == pytest.approx((0.1 * 10**1.8, 1.0))
    act = bz.activation_quantizer(get("irnet"), 3)
    act.set_schedule(5, 10)  # t = 1, k = 1
    x = torch.tensor([0.0, 0.5, -2.0], requires_grad=True)
    y = act(x)
    assert y.tolist() == [1.0, 1.0, -1.0]
    y.sum().backward()
    expect = [1.0, 1 - math.tanh(0.5) ** 2, 1 - math.tanh(2.0) ** 2]
    assert x.grad is not None
    np.testing.assert_allclose(x.grad.numpy(), expect, rtol=1e-6)


def test_siman_top_half_of_magnitudes_and_alpha() -> None:
    w = torch.tensor([[3.0, -1.0, 0.5, -4.0]], requires_grad=True)
    q = _wq("siman", w)
    out = q(w)  # first call initializes alpha to mean|w| = 2.125
    ex = q.export(w)
    assert ex.bits.tolist() == [[1, -1, -1, 1]]
    assert ex.scale.tolist() == [2.125]
    np.testing.assert_allclose(out.detach().numpy(), [[2.125, -2.125, -2.125, 2.125]])
    # identity STE on X = |w_hat|: d out / d w = alpha * d X / d w
    out.sum().backward()
    w2 = w.detach().clone().requires_grad_(True)
    (bz.standardize_per_channel(w2, unbiased=True, eps=1e-5).abs().sum() * 2.125).backward()
    assert w.grad is not None and w2.grad is not None
    torch.testing.assert_close(w.grad, w2.grad)
    assert q.no_weight_decay and q.no_weight_decay_parameters() == [q.alpha]


def test_siman_01_code_trains_but_refuses_export() -> None:
    w = torch.tensor([[3.0, -1.0, 0.5, -4.0]])
    q = _wq("siman", w, code="01")
    np.testing.assert_allclose(q(w).detach().numpy(), [[2.125, 0, 0, 2.125]])
    with pytest.raises(BnnExportError, match="train with the default code 'pm1'"):
        q.export(w)


@pytest.mark.parametrize(
    "p, prune, expect",
    [
        (0.4, 0.0, [1, -1, 1, -1, -1]),  # round(2.0) = 2 ones: 0.3, 0.2
        (0.5, 0.0, [1, -1, 1, 1, -1]),  # round(2.5) = 3 ones (halves round up)
        (0.5, 0.4, [1, 0, 1, 0, -1]),  # bottom floor(1.5)=1 -> -1, top 5-floor(3.5)=2 -> +1
    ],
)
def test_equal_bits_sort(p: float, prune: float, expect: list[int]) -> None:
    w = torch.tensor([[0.3, -0.1, 0.2, 0.0, -0.5]])
    ex = _wq("equal_bits", w, bit_ratio=p, prune_rate=prune).export(w)
    assert ex.bits.tolist() == [expect]
    assert ex.scale.tolist() == pytest.approx([math.sqrt(2 / 5)])


def test_equal_bits_ties_are_broken_by_position_and_layer_granularity() -> None:
    w = torch.zeros(2, 4)
    assert _wq("equal_bits", w).export(w).bits.tolist() == [[-1, -1, 1, 1]] * 2
    w = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    ex = _wq("equal_bits", w, granularity="layer", bit_ratio=0.5).export(w)
    assert ex.bits.tolist() == [[-1, -1, -1], [1, 1, 1]]


def test_equal_bits_gradient_is_identity_times_scale() -> None:
    w = torch.randn(3, 8, requires_grad=True)
    _wq("equal_bits", w)(w).sum().backward()
    assert w.grad is not None
    torch.testing.assert_close(w.grad, torch.full_like(w, math.sqrt(2 / 8)))


def test_sdbnn_weight_shift_can_flip_a_sign() -> None:
    w = torch.tensor([[-0.001, 1.0, 1.0]])
    ex = _wq("sdbnn", w).export(w)  # shift = sigmoid(0) * 0.01 * 0.666 = 0.00333
    assert ex.bits.tolist() == [[1, 1, 1]]


def test_sdbnn_static_activation_threshold() -> None:
    act = bz.activation_quantizer(get("sdbnn", activation="static"), 2)
    x = torch.tensor([[-0.4, -0.6]])
    assert act(x).tolist() == [[1.0, -1.0]]  # a + sigmoid(0) = a + 0.5
    e = act.export()
    assert e.kind == "threshold" and e.threshold is not None
    np.testing.assert_allclose(e.threshold, [-0.5, -0.5])


def test_gwt_schedule_soft_training_and_hard_eval() -> None:
    w = torch.tensor([[1.0, -1.0, 3.0, -3.0]])
    q = _wq("gwt", w)
    q.set_schedule(0, 3)
    assert float(q.beta) == pytest.approx(1.0)
    q.set_schedule(1, 3)
    assert float(q.beta) == pytest.approx(10.0)
    q.set_schedule(2, 3)
    assert float(q.beta) == pytest.approx(100.0)
    q.set_schedule(0, 3)
    w_hat = (w - w.mean()) / w.std(correction=0)
    torch.testing.assert_close(q(w), torch.tanh(w_hat))
    q.eval()
    assert q(w).tolist() == [[1.0, -1.0, 1.0, -1.0]]
    ex = q.export(w)
    assert ex.bits.tolist() == [[1, -1, 1, -1]] and ex.notes["unsaturated_fraction"] == 0.0


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("equal_bits", {"bit_ratio": 0.0}, r"bit ratio must be a number in \(0, 1\), got 0.0"),
        ("equal_bits", {"bit_ratio": 1.5}, r"bit ratio must be a number in \(0, 1\)"),
        ("equal_bits", {"bit_ratio": float("nan")}, "must be finite"),
        ("equal_bits", {"prune_rate": 1.0}, r"prune rate must be a number in \[0, 1\)"),
        ("equal_bits", {"prune_rate": -0.1}, r"prune rate must be a number in \[0, 1\)"),
        ("equal_bits", {"granularity": "tensor"}, "granularity must be one of channel, layer"),
        ("equal_bits", {"bit_ratio": 0.3, "prune_rate": 0.2}, "needs bit_ratio 0.5"),
        ("irnet", {"t_min": 5.0, "t_max": 1.0}, "must not exceed"),
        ("ste", {"bit_ratio": 0.5}, "has no parameter"),
        ("siman", {"code": "x"}, "code must be one of pm1, 01"),
    ],
)
def test_bad_parameters_are_clear_errors(
    name: str, params: dict[str, object], message: str
) -> None:
    with pytest.raises(BnnExportError, match=message):
        get(name, **params)


def _apply_activation(x: torch.Tensor, e: ActivationExport) -> torch.Tensor:
    """Inference-time binarization as a converter implements it from the export terms."""
    if e.kind == "sign":
        return bz.sign_pm1(x)
    if e.kind == "center":
        return bz.sign_pm1(x - x.mean(dim=tuple(range(1, x.dim())), keepdim=True))
    if e.kind == "threshold":
        assert e.threshold is not None
        return bz.sign_pm1(x - torch.from_numpy(e.threshold).reshape(1, -1, *[1] * (x.dim() - 2)))
    assert e.se_w1 is not None and e.se_w2 is not None
    pooled = x.mean(dim=tuple(range(2, x.dim()))) if x.dim() > 2 else x
    se = torch.sigmoid(
        torch.relu(pooled @ torch.from_numpy(e.se_w1).T) @ torch.from_numpy(e.se_w2).T
    )
    return bz.sign_pm1(x + se.reshape(*se.shape, *[1] * (x.dim() - 2)))


@pytest.mark.parametrize("pad_value", [0.0, 1.0])
@pytest.mark.parametrize("name", BINARY)
def test_export_terms_reproduce_the_eval_forward(name: str, pad_value: float) -> None:
    """What a binarizer exports (bits, scale, activation rule) computes exactly its forward."""
    torch.manual_seed(3)
    params = {"activation": "static"} if name == "sdbnn" else {}
    for extra in [{}, {"activation": "se"}] if name == "sdbnn" else [{}]:
        cfg = get(name, **{**params, **extra})
        conv = BinaryConv2d(33, 5, 3, padding=1, stride=2, binarizer=cfg, pad_value=pad_value)
        x = torch.randn(2, 33, 7, 7)
        conv(x)  # lazy initialization (SiMaN alpha)
        conv.eval()
        with torch.no_grad():
            got = conv(x)
            w = conv.export_weights()
            a = _apply_activation(x, conv.export_activation())
            a = F.pad(a, (1, 1, 1, 1), value=pad_value)
            wb = torch.from_numpy(w.bits.astype(np.float32))
            want = F.conv2d(a, wb, stride=2) * torch.from_numpy(w.scale).reshape(1, -1, 1, 1)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
        assert set(np.unique(w.bits)) <= {-1, 1}
        lin = BinaryLinear(70, 4, binarizer=cfg)
        xl = torch.randn(3, 70)
        lin(xl)
        lin.eval()
        with torch.no_grad():
            e = lin.export_weights()
            want_l = (
                _apply_activation(xl, lin.export_activation())
                @ torch.from_numpy(e.bits.astype(np.float32)).T
            ) * torch.from_numpy(e.scale)
            torch.testing.assert_close(lin(xl), want_l, rtol=1e-5, atol=1e-4)
