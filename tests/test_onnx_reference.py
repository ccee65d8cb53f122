"""The numpy reference BinaryConv2d against a float conv oracle (torch) on +-1 tensors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from bnn_export.convert import onnx_ops
from tests.conv_cases import EDGE_CASES, Conv, convs, random_inputs

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _oracle(conv: Conv, x: np.ndarray, w_pm1: np.ndarray) -> np.ndarray:
    a = torch.from_numpy(np.where(x >= 0, 1.0, -1.0).astype(np.float32))
    a = F.pad(a, (conv.left, conv.right, conv.top, conv.bottom), value=float(conv.pad_value))
    y = F.conv2d(
        a,
        torch.from_numpy(w_pm1.astype(np.float32)),
        stride=(conv.sh, conv.sw),
        dilation=(conv.dh, conv.dw),
        groups=conv.group,
    )
    return y.numpy()


def _check(conv: Conv, seed: int) -> None:
    x, w_pm1, w = random_inputs(conv, seed)
    acc = onnx_ops.binary_conv2d_accumulate(x, w, **conv.attrs())
    np.testing.assert_array_equal(acc.astype(np.float32), _oracle(conv, x, w_pm1), str(conv))


@pytest.mark.parametrize("conv", EDGE_CASES, ids=str)
def test_reference_matches_float_conv(conv: Conv) -> None:
    _check(conv, 1)


@settings(
    max_examples=60, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(conv=convs())
def test_reference_matches_float_conv_random(conv: Conv) -> None:
    _check(conv, 2)


def test_affine_applied() -> None:
    conv = EDGE_CASES[1]
    x, _, w = random_inputs(conv, 0)
    m = np.linspace(-2, 3, conv.o).astype(np.float32)
    b = np.linspace(5, -1, conv.o).astype(np.float32)
    acc = onnx_ops.binary_conv2d_accumulate(x, w, **conv.attrs()).astype(np.float32)
    y = onnx_ops.binary_conv2d_reference(x, w, m, b, **conv.attrs())
    np.testing.assert_array_equal(y, b[None, :, None, None] + m[None, :, None, None] * acc)


def test_binarize_convention() -> None:
    x = np.array([0.0, -0.0, 1e-30, -1e-30, np.nan, np.inf, -np.inf], np.float32)
    np.testing.assert_array_equal(onnx_ops.binarize(x), [1, 1, 1, -1, -1, 1, -1])


def test_bit_layout() -> None:
    v = np.ones(40, np.int8)
    v[[0, 5, 33]] = -1
    words = onnx_ops.pack_bits_pm1(v)
    assert words.dtype == np.uint32
    assert words.tolist() == [(1 << 0) | (1 << 5), 1 << 1]
    np.testing.assert_array_equal(onnx_ops.unpack_bits(words, 40), v)


def test_weight_pack_roundtrip() -> None:
    rng = np.random.default_rng(0)
    w = rng.choice(np.array([-1, 1], np.int8), size=(4, 70, 3, 2))
    packed = onnx_ops.pack_conv_weights(w)
    assert packed.shape == (4, 3, 2, 3)
    np.testing.assert_array_equal(onnx_ops.unpack_conv_weights(packed, 70), w)
    # OHWI order: word [o, ky, kx, j] holds channels 32j..32j+31 of tap (ky, kx)
    assert packed[1, 2, 1, 2] == onnx_ops.pack_bits_pm1(w[1, 64:, 2, 1])[0]
