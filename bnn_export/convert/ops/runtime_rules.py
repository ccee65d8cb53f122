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


def openvino_conv_ok(a: ConvGeometry, pad_value: float, in_shape: Shape) -> bool:
    """OpenVINO's CPU plugin fuses FakeQuantize + Conv into BinaryConvolution only for
    ungrouped convs (grouped ones run as a float GroupConvolution: found by the fuzz
    suite's runtime-op check), compiles it only with an output no smaller than the zero
    padding, and computes it right only for channels a multiple of 8."""
    if int(a.groups) > 1:
        return False
    if float(pad_value) == 0.0:
        # zero padding stays in the Conv; OpenVINO's CPU plugin refuses to compile a
        # BinaryConvolution whose output is smaller than its padding ("has unsupported
        # parameters", e.g. 5x5 dilation 2 'same' on a 5x5 map; found by the fuzz suite)
        for i in range(2):
            k, s, p, d = a.kernel[i], a.stride[i], a.padding[i], a.dilation[i]
            if conv_output_size(in_shape[2 + i], k, s, p, p, d) < p:
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
