from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bnn_export.binarizers import get
from bnn_export.models.layers import BinaryConv2d, BinaryLinear


def _naive_bconv(
    x: np.ndarray, w: np.ndarray, pad: int, pad_value: float, stride: int
) -> np.ndarray:
    """Direct loops over +-1 values; the padded border holds `pad_value`."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    a = np.where(x >= 0, 1.0, -1.0)
    ap = np.full((n, c, h + 2 * pad, wd + 2 * pad), pad_value)
    ap[:, :, pad : pad + h, pad : pad + wd] = a
    b = np.where(w >= 0, 1.0, -1.0)
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, o, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = ap[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw]
            out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, b)
    return out


@pytest.mark.parametrize("pad_value", [0.0, 1.0])
@pytest.mark.parametrize("stride", [1, 2])
def test_binary_conv_matches_naive_loops(pad_value: float, stride: int) -> None:
    torch.manual_seed(0)
    layer = BinaryConv2d(
        5, 7, 3, padding=1, stride=stride, binarizer=get("ste"), pad_value=pad_value
    )
    x = torch.randn(2, 5, 6, 6)
    x[0, 0, 0, 0] = 0.0  # zero activations binarize to +1
    got = layer(x).detach().numpy()
    want = _naive_bconv(x.numpy(), layer.weight.detach().numpy(), 1, pad_value, stride)
    np.testing.assert_array_equal(got, want)


def test_padding_value_changes_only_the_border() -> None:
    torch.manual_seed(1)
    a = BinaryConv2d(4, 3, 3, padding=1, binarizer=get("ste"), pad_value=1.0)
    b = BinaryConv2d(4, 3, 3, padding=1, binarizer=get("ste"), pad_value=0.0)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 4, 5, 5)
    d = (a(x) - b(x)).detach()
    assert torch.all(d[:, :, 1:-1, 1:-1] == 0)
    assert torch.any(d[:, :, 0, :] != 0)


def test_ste_gradients_are_clipped() -> None:
    layer = BinaryLinear(3, 1, binarizer=get("ste"))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -2.0, 0.0]]))
    x = torch.tensor([[0.3, 1.5, -0.2]], requires_grad=True)
    layer(x).sum().backward()
    # d/dx: sign(w) where |x| <= 1; d/dw: sign(x) where |w| <= 1
    assert x.grad is not None and layer.weight.grad is not None
    assert x.grad.tolist() == [[1.0, 0.0, 1.0]]
    assert layer.weight.grad.tolist() == [[1.0, 0.0, -1.0]]


def test_float_baseline_is_a_plain_conv() -> None:
    torch.manual_seed(2)
    layer = BinaryConv2d(3, 4, 3, padding=1, binarizer=get("none"))
    x = torch.randn(1, 3, 5, 5)
    want = F.conv2d(torch.clamp(x, -1, 1), layer.weight, padding=1)
    torch.testing.assert_close(layer(x), want)
