"""What OpenVINO's CPU plugin and LCE 0.16 can run as 1-bit ops (found by the fuzz suite,
tests/test_fuzz_export.py; docs/reliability.md). A binary layer they cannot run is
exported as an exact float conv over sign(x) and reported, never dropped."""

from __future__ import annotations

import numpy as np

from bnn_export.convert.ops.base import Shape
from bnn_export.convert.ops.float_layers import ConvGeometry
from bnn_export.geometry import conv_output_size

#: OpenVINO's CPU BinaryConvolution computes wrong sums when the input channels are not a
#: multiple of 8 (found by tests/test_fuzz_export.py, openvino 2025); such layers, and
#: grouped ones (never fused into BinaryConvolution), are exported as an exact float Conv
#: over sign(x) instead (integer sums, no rounding) and reported as float fallbacks.
OPENVINO_CHANNEL_MULTIPLE = 8

#: LCE's converter treats a kernel as binary only if every output channel's |scale| is
#: above float32's epsilon (larq_compute_engine/mlir/transforms: IsBinaryFilter).
LCE_MIN_SCALE = float(np.finfo(np.float32).eps)

Pair = tuple[int, int]


def openvino_channels_ok(in_shape: Shape) -> bool:
    """OpenVINO computes BinaryConvolution right only for channels a multiple of 8."""
    return in_shape[1] % OPENVINO_CHANNEL_MULTIPLE == 0


#: Output columns OpenVINO's CPU BinaryConvolution kernel computes per step: 4 with AVX-512,
#: 2 with AVX2 or SSE4.1. Its zero-padding limits depend on it; an export must compile on
#: either (the same .onnx runs on AVX2-only and AVX-512 CPUs).
OPENVINO_BCONV_STEPS = (4, 2)


def openvino_zero_padding_ok(
    a: ConvGeometry, in_shape: Shape, steps: tuple[int, ...] = OPENVINO_BCONV_STEPS
) -> bool:
    """Whether OpenVINO's CPU plugin compiles a zero-padded BinaryConvolution of this
    geometry on AVX-512 and AVX2 CPUs alike. Its kernel takes at most one step's worth of
    left padding and of right overhang (columns read beyond the input by the last full
    step), and a kernel wider than 7 with top/left padding only at stride 1; otherwise
    "BinaryConvolution ... has unsupported parameters" at compile time (found by the fuzz
    suite: 5x5 dilation 2 'same' on 5x5, pad 4, fails with AVX2's 2-column steps and
    compiles with AVX-512's 4). ``steps``: the kernel step widths to allow for."""
    (kh, kw), (sh, sw), (ph, pw), (_, dw) = a.kernel, a.stride, a.padding, a.dilation
    iw = in_shape[3]
    ow = conv_output_size(iw, kw, sw, pw, pw, dw)
    if ow < 1 or conv_output_size(in_shape[2], kh, sh, ph, ph, a.dilation[0]) < 1:
        return False
    if kw > 7 and (ph or pw) and (sh, sw) != (1, 1):
        return False
    for step in steps:
        ur_w = min(step, ow)
        last_full = ow - ow % ur_w - 1  # the last column of the last full step
        overhang = max(0, last_full * sw + (kw - 1) * dw - (iw + pw - 1))
        if pw > ur_w or overhang > ur_w:
            return False
    return True


def openvino_conv_ok(a: ConvGeometry, pad_value: float, in_shape: Shape) -> bool:
    """OpenVINO's CPU plugin fuses FakeQuantize + Conv into BinaryConvolution only for
    ungrouped convs (grouped ones run as a float GroupConvolution: found by the fuzz
    suite's runtime-op check), compiles it only within its zero-padding limits
    (``openvino_zero_padding_ok``; a +1 pad is explicit, before the FakeQuantize), and
    computes it right only for channels a multiple of 8."""
    if int(a.groups) > 1:
        return False
    if float(pad_value) == 0.0 and not openvino_zero_padding_ok(a, in_shape):
        return False
    return openvino_channels_ok(in_shape)


def lce_scale_reason(scale: np.ndarray) -> str | None:
    """Why LCE 0.16 keeps a binary layer with per-output-channel weight ``scale`` float
    (None if the scale is fine); shared by the PyTorch and the Larq route."""
    if float(np.abs(scale).min()) <= LCE_MIN_SCALE:
        return "an output channel's weight scale is <= 2^-23 (LCE would silently keep it float)"
    return None


def lce_same(k: Pair, s: Pair, p: Pair, d: Pair, in_shape: Shape, pad_value: float) -> bool:
    """LCE's fused 'same' padding applies: stride 1, odd kernel, p = d*(k-1)/2; with pad
    value 0 also a map no smaller than the kernel's span (LCE's zero-padding correction is
    wrong there: 3x3 'same' on 2x2, found by tests/test_fuzz_export.py)."""
    return all(
        s[i] == 1
        and k[i] % 2 == 1
        and p[i] == d[i] * (k[i] - 1) // 2
        and (pad_value != 0.0 or in_shape[2 + i] >= d[i] * (k[i] - 1) + 1)
        for i in range(2)
    )
