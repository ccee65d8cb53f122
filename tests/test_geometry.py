"""Conv geometry against torch (the definition the exporters must reproduce)."""

from __future__ import annotations

import itertools

import pytest
import torch

from bnn_export.geometry import conv_output_size, minimal_pads


@pytest.mark.parametrize(
    "size, k, s, p, d",
    [
        c
        for c in itertools.product((1, 4, 5, 8, 32), (1, 3, 5, 7), (1, 2, 3), (0, 1, 3), (1, 2))
        if c[0] + 2 * c[3] >= (c[1] - 1) * c[4] + 1
    ],  # fmt: skip
)
def test_minimal_pads_give_torch_outputs(size: int, k: int, s: int, p: int, d: int) -> None:
    x = torch.randn(1, 1, size, 1)
    w = torch.randn(1, 1, k, 1)
    ref = torch.nn.functional.conv2d(x, w, stride=(s, 1), padding=(p, 0), dilation=(d, 1))
    begin, end = minimal_pads(size, k, s, p, d)
    assert begin == p and 0 <= end <= p
    padded = torch.nn.functional.pad(x, (0, 0, begin, end))
    got = torch.nn.functional.conv2d(padded, w, stride=(s, 1), dilation=(d, 1))
    assert conv_output_size(size, k, s, p, p, d) == ref.shape[2] == got.shape[2]
    torch.testing.assert_close(got, ref)


def test_stride_two_on_even_size_drops_the_end_pad() -> None:
    """The case LCE 0.16 mis-fuses when padded symmetrically: checked by hand."""
    assert minimal_pads(32, 3, 2, 1, 1) == (1, 0)
    assert minimal_pads(32, 7, 2, 3, 1) == (3, 2)
    assert minimal_pads(5, 3, 2, 1, 1) == (1, 1)
