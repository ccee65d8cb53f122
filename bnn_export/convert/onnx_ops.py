"""Numpy reference of the com.bnn_export ONNX ops (spec: docs/onnx_ops.md).

`BinaryConv2d` plugs into ``onnx.reference.ReferenceEvaluator(model, new_ops=[BinaryConv2d])``.
The helpers are plain numpy; the module imports onnx for the OpRun base class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from onnx import helper
from onnx.reference.op_run import OpRun

from bnn_export.geometry import conv_output_size

DOMAIN = "com.bnn_export"
OPSET_VERSION = 1


def binarize(x: np.ndarray) -> np.ndarray:
    """+1 where x >= 0 (incl. 0.0 and -0.0), -1 elsewhere (incl. NaN); int8."""
    return np.where(np.asarray(x) >= 0, 1, -1).astype(np.int8)


def pack_bits_pm1(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Pack +-1 values along `axis` into uint32 words, LSB first; bit 1 means -1.

    `values < 0` sets the bit, so 0 counts as +1. The axis length L becomes ceil(L / 32)
    words, padding bits are 0. The packed axis ends up last.
    """
    v = np.moveaxis(np.asarray(values), axis, -1)
    n = v.shape[-1]
    words = -(-n // 32)
    bits = np.zeros(v.shape[:-1] + (words * 32,), dtype=np.uint64)
    bits[..., :n] = v < 0
    bits = bits.reshape(v.shape[:-1] + (words, 32))
    shifts = np.arange(32, dtype=np.uint64)
    return np.bitwise_or.reduce(bits << shifts, axis=-1).astype(np.uint32)


def unpack_bits(words: np.ndarray, count: int) -> np.ndarray:
    """Inverse of pack_bits_pm1 along the last axis: int8 +-1 of length `count`."""
    w = np.asarray(words, dtype=np.uint32)
    shifts = np.arange(32, dtype=np.uint32)
    bits = (w[..., None] >> shifts) & 1
    bits = bits.reshape(w.shape[:-1] + (w.shape[-1] * 32,))[..., :count]
    return (1 - 2 * bits.astype(np.int8)).astype(np.int8)


def pack_conv_weights(w_pm1: np.ndarray) -> np.ndarray:
    """+-1 weights [O, C/group, KH, KW] -> uint32 [O, KH, KW, CW] (the `W` input)."""
    return pack_bits_pm1(np.transpose(np.asarray(w_pm1), (0, 2, 3, 1)), axis=-1)


def unpack_conv_weights(w_packed: np.ndarray, channels_per_group: int) -> np.ndarray:
    """uint32 [O, KH, KW, CW] -> int8 +-1 [O, C/group, KH, KW]."""
    return np.transpose(unpack_bits(w_packed, channels_per_group), (0, 3, 1, 2))


def binary_conv2d_accumulate(
    x: np.ndarray,
    w_packed: np.ndarray,
    *,
    threshold: np.ndarray | None = None,
    channels_in: int,
    kernel_shape: Sequence[int],
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
    pad_value: int = 1,
) -> np.ndarray:
    """Integer accumulation `acc` of BinaryConv2d, int32 [N, O, HO, WO]; with
    ``threshold`` ([C]) channel c is binarized at threshold[c] (+1 where x >= it)."""
    n, c, h, w = x.shape
    if c != channels_in:
        raise ValueError(f"X has {c} channels but channels_in={channels_in}")
    if pad_value not in (0, 1):
        raise ValueError(f"pad_value must be 0 or 1, got {pad_value}")
    kh, kw = kernel_shape
    sh, sw = strides
    dh, dw = dilations
    top, left, bottom, right = pads
    cg = c // group
    o = w_packed.shape[0]
    og = o // group
    weights = unpack_conv_weights(w_packed, cg).astype(np.int32)  # [O, Cg, KH, KW]
    if threshold is not None and np.size(threshold):
        t = np.asarray(threshold, dtype=np.float32).reshape(-1)
        if t.size != c:
            raise ValueError(f"threshold has {t.size} values for {c} channels")
        signs = np.where(x >= t.reshape(1, -1, 1, 1), 1, -1).astype(np.int8)
    else:
        signs = binarize(x)
    a = np.pad(
        signs.astype(np.int32),
        ((0, 0), (0, 0), (top, bottom), (left, right)),
        constant_values=pad_value,
    )
    ho = conv_output_size(h, kh, sh, top, bottom, dh)
    wo = conv_output_size(w, kw, sw, left, right, dw)
    # cols[n, c, ky, kx, y, x] = a[n, c, y*sh + ky*dh, x*sw + kx*dw]
    cols = np.empty((n, c, kh, kw, ho, wo), dtype=np.int32)
    for ky in range(kh):
        for kx in range(kw):
            y0, x0 = ky * dh, kx * dw
            cols[:, :, ky, kx] = a[
                :, :, y0 : y0 + sh * (ho - 1) + 1 : sh, x0 : x0 + sw * (wo - 1) + 1 : sw
            ]
    acc = np.empty((n, o, ho, wo), dtype=np.int32)
    for g in range(group):
        cg_cols = cols[:, g * cg : (g + 1) * cg]
        cg_w = weights[g * og : (g + 1) * og]
        acc[:, g * og : (g + 1) * og] = np.einsum("ncijyx,ocij->noyx", cg_cols, cg_w)
    return acc


def binary_conv2d_reference(
    x: np.ndarray,
    w_packed: np.ndarray,
    multiplier: np.ndarray,
    bias: np.ndarray,
    threshold: np.ndarray | None = None,
    residual: np.ndarray | None = None,
    rprelu_shift: np.ndarray | None = None,
    rprelu_slope: np.ndarray | None = None,
    rprelu_bias: np.ndarray | None = None,
    **attrs: Any,
) -> np.ndarray:
    """BinaryConv2d: bias[o] + multiplier[o] * acc (+ residual) (then RPReLU), float32
    [N, O, HO, WO].

    The affine part is float32 multiply then float32 add (no fused multiply-add), then the
    residual's float32 add: the rounding the native kernels reproduce. ``threshold``: see
    ``binary_conv2d_accumulate`` (an empty one means none; so does an empty ``residual``).
    ``rprelu_shift`` / ``rprelu_slope`` / ``rprelu_bias`` ([O] each, all three or none):
    ReActNet's RPReLU last, ``t = y - shift[o]; (t < 0 ? slope[o] * t : t) + bias[o]``,
    each step rounded to float32 (ONNX's Sub, PRelu, Add).
    """
    acc = binary_conv2d_accumulate(
        np.asarray(x, dtype=np.float32), np.asarray(w_packed), threshold=threshold, **attrs
    )
    m = np.asarray(multiplier, dtype=np.float32).reshape(1, -1, 1, 1)
    b = np.asarray(bias, dtype=np.float32).reshape(1, -1, 1, 1)
    y = (b + m * acc.astype(np.float32)).astype(np.float32)
    if residual is not None and np.shape(residual) != (0,):
        r = np.asarray(residual, dtype=np.float32)
        if r.shape != y.shape:
            raise ValueError(f"residual shape {r.shape} != output shape {y.shape}")
        y = (y + r).astype(np.float32)
    rprelu = rprelu_vectors(rprelu_shift, rprelu_slope, rprelu_bias, y.shape[1])
    if rprelu is not None:
        g, s, z = (v.reshape(1, -1, 1, 1) for v in rprelu)
        t = (y - g).astype(np.float32)
        with np.errstate(invalid="ignore", over="ignore"):
            q = np.where(t < 0, (s * t).astype(np.float32), t)
        y = (q + z).astype(np.float32)
    return y


def rprelu_vectors(
    shift: np.ndarray | None, slope: np.ndarray | None, bias: np.ndarray | None, channels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The RPReLU inputs as three float32 [O] vectors, or None when none is given; a
    partial set or a vector of another length is a ValueError."""
    given = {
        name: v
        for name, v in (("rprelu_shift", shift), ("rprelu_slope", slope), ("rprelu_bias", bias))
        if v is not None
    }
    if not given:
        return None
    if len(given) != 3:
        raise ValueError(
            "rprelu_shift, rprelu_slope and rprelu_bias must be given together "
            f"(got only {', '.join(given)})"
        )
    out = []
    for name, v in given.items():
        a = np.asarray(v, dtype=np.float32)
        if a.shape != (channels,):
            raise ValueError(f"{name} must have shape [{channels}] (O), got {list(a.shape)}")
        out.append(a)
    return out[0], out[1], out[2]


#: BinaryConv2d's inputs in order (docs/onnx_ops.md); the last five are optional, and an
#: optional input that precedes a given one is an empty float tensor (shape [0])
INPUTS = (
    "X",
    "W",
    "multiplier",
    "bias",
    "threshold",
    "residual",
    "rprelu_shift",
    "rprelu_slope",
    "rprelu_bias",
)


def binary_conv2d_inputs(
    x: str,
    w: str,
    multiplier: str,
    bias: str,
    *,
    empty: str,
    threshold: str | None = None,
    residual: str | None = None,
    rprelu: Sequence[str] | None = None,
) -> list[str]:
    """The input names of a BinaryConv2d node, in ``INPUTS`` order: ``empty`` (the name of
    an empty [0] float tensor) stands for an optional input left out before a given one;
    ``rprelu`` is (shift, slope, bias) or None."""
    if rprelu is not None and len(rprelu) != 3:
        raise ValueError(f"rprelu needs 3 tensor names (shift, slope, bias), got {len(rprelu)}")
    names: list[str | None] = [threshold, residual, *(rprelu or (None, None, None))]
    while names and names[-1] is None:
        names.pop()
    return [x, w, multiplier, bias, *(empty if n is None else n for n in names)]


def make_binary_conv2d_node(
    inputs: Sequence[str],
    outputs: Sequence[str],
    *,
    channels_in: int,
    kernel_shape: Sequence[int],
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
    pad_value: int = 1,
    name: str | None = None,
) -> Any:
    """An onnx NodeProto for BinaryConv2d with every attribute set explicitly; ``inputs``
    in ``INPUTS`` order (``binary_conv2d_inputs`` fills placeholders in)."""
    return helper.make_node(
        "BinaryConv2d",
        list(inputs),
        list(outputs),
        name=name,
        domain=DOMAIN,
        channels_in=int(channels_in),
        kernel_shape=[int(k) for k in kernel_shape],
        strides=[int(s) for s in strides],
        pads=[int(p) for p in pads],
        dilations=[int(d) for d in dilations],
        group=int(group),
        pad_value=int(pad_value),
    )


class BinaryConv2d(OpRun):
    """onnx.reference implementation of com.bnn_export::BinaryConv2d."""

    op_domain = DOMAIN

    def _run(  # type: ignore[override]
        self,
        X: np.ndarray,
        W: np.ndarray,
        multiplier: np.ndarray,
        bias: np.ndarray,
        threshold: np.ndarray | None = None,
        residual: np.ndarray | None = None,
        rprelu_shift: np.ndarray | None = None,
        rprelu_slope: np.ndarray | None = None,
        rprelu_bias: np.ndarray | None = None,
        channels_in: int | None = None,
        kernel_shape: Sequence[int] | None = None,
        strides: Sequence[int] | None = None,
        pads: Sequence[int] | None = None,
        dilations: Sequence[int] | None = None,
        group: int | None = None,
        pad_value: int | None = None,
    ) -> tuple[np.ndarray]:
        if channels_in is None or kernel_shape is None:
            raise ValueError("BinaryConv2d needs attributes channels_in and kernel_shape")
        y = binary_conv2d_reference(
            X,
            W,
            multiplier,
            bias,
            threshold=threshold,
            residual=residual,
            rprelu_shift=rprelu_shift,
            rprelu_slope=rprelu_slope,
            rprelu_bias=rprelu_bias,
            channels_in=int(channels_in),
            kernel_shape=tuple(kernel_shape),
            strides=tuple(strides) if strides is not None else (1, 1),
            pads=tuple(pads) if pads is not None else (0, 0, 0, 0),
            dilations=tuple(dilations) if dilations is not None else (1, 1),
            group=int(group) if group is not None else 1,
            pad_value=int(pad_value) if pad_value is not None else 1,
        )
        return (y,)
