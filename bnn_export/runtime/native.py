"""ctypes bindings of the native binary-convolution kernels (runtime/bnn.h).

The libraries are built by the package build step (`pip install -e .`, or `make setup`)
into ``bnn_export/runtime/_lib``; ``BNN_LIB_DIR`` overrides that location.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

KERNEL_LIB = "libbnn_kernels.so"
ORT_LIB = "libbnn_ort.so"
_FIX = "run `make setup` (or `pip install -e .` from the repository root)"
_ORT_FIX = (
    "run `bash scripts/fetch_ort_headers.sh && pip install -e .` (or set ORT_INCLUDE_DIR to "
    "an onnxruntime release's include/ directory before installing); `make setup` does both"
)


class NativeLibraryError(RuntimeError):
    """A native library is missing or failed; the message names the fix."""


class KernelError(RuntimeError):
    """The native kernel rejected a call (bad shape/attribute, out of memory)."""


class _Params(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_int64)
        for name in (
            "n",
            "c",
            "h",
            "w",
            "o",
            "kh",
            "kw",
            "sh",
            "sw",
            "dh",
            "dw",
            "pad_top",
            "pad_left",
            "pad_bottom",
            "pad_right",
            "group",
            "pad_value",
        )
    ]


class _Fusion(ctypes.Structure):
    """``bnn_fusion`` (runtime/bnn.h): the optional inputs, NULL = off."""

    _fields_ = [
        (name, ctypes.c_void_p)
        for name in ("threshold", "residual", "rprelu_shift", "rprelu_slope", "rprelu_bias")
    ]


def lib_dir() -> Path:
    env = os.environ.get("BNN_LIB_DIR")
    return Path(env) if env else Path(__file__).resolve().parent / "_lib"


@functools.cache
def _lib() -> ctypes.CDLL:
    path = lib_dir() / KERNEL_LIB
    if not path.is_file():
        raise NativeLibraryError(f"native kernel library {path} not found; {_FIX}")
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise NativeLibraryError(f"cannot load {path}: {exc}; rebuild it: {_FIX}") from exc
    i64, p_params = ctypes.c_int64, ctypes.POINTER(_Params)
    vp = ctypes.c_void_p
    lib.bnn_conv2d.argtypes = [p_params, vp, vp, vp, vp, vp, ctypes.c_int]
    lib.bnn_conv2d.restype = ctypes.c_int
    lib.bnn_conv2d_fused_ex.argtypes = [vp, p_params, vp, vp, vp, vp, vp, vp, vp, vp, ctypes.c_int]
    lib.bnn_conv2d_fused_ex.restype = ctypes.c_int
    lib.bnn_conv2d_output_shape.argtypes = [p_params, ctypes.POINTER(i64), ctypes.POINTER(i64)]
    lib.bnn_conv2d_output_shape.restype = ctypes.c_int
    lib.bnn_pack_weights.argtypes = [vp, i64, i64, i64, i64, vp]
    lib.bnn_pack_weights.restype = ctypes.c_int
    lib.bnn_weight_words.argtypes = [i64]
    lib.bnn_weight_words.restype = i64
    for name in ("bnn_kernel_name", "bnn_available_kernels", "bnn_last_error"):
        getattr(lib, name).argtypes = []
        getattr(lib, name).restype = ctypes.c_char_p
    lib.bnn_set_kernel.argtypes = [ctypes.c_char_p]
    lib.bnn_set_kernel.restype = ctypes.c_int
    return lib


def _check(rc: int, what: str) -> None:
    if rc != 0:
        msg = _lib().bnn_last_error().decode()
        raise KernelError(f"{what} failed (code {rc}): {msg}")


def kernel_name() -> str:
    """Name of the kernel variant in use (portable, avx2, avx512, neon).

    The variant is chosen at first use: ``BNN_KERNEL`` (a variant name or ``auto``) when set,
    else the best this CPU supports. An unknown ``BNN_KERNEL``, or a variant this CPU (or
    build) lacks, raises KernelError naming the value and the variants available; every
    convolution (Python or the onnxruntime op) fails with the same message.
    """
    lib = _lib()
    name = lib.bnn_kernel_name().decode()
    if name == "unavailable":
        raise KernelError(f"no kernel variant selected: {lib.bnn_last_error().decode()}")
    return name


def available_kernels() -> list[str]:
    """Variants usable on this CPU with this build, best last."""
    return _lib().bnn_available_kernels().decode().split(",")


def set_kernel(name: str) -> None:
    """Force a variant ("auto" = best), overriding ``BNN_KERNEL``. The onnxruntime op library
    shares this library's state, so its BinaryConv2d follows too."""
    _check(_lib().bnn_set_kernel(name.encode()), f"set_kernel({name!r})")


@contextmanager
def forced_kernel(name: str) -> Iterator[None]:
    """Use variant `name` inside the block, then return to the variant in use before it
    (automatic selection when none could be chosen), so that a ``BNN_KERNEL`` the process
    was started with stays in force after the block."""
    try:
        previous = kernel_name()
    except KernelError:
        previous = "auto"
    set_kernel(name)
    try:
        yield
    finally:
        set_kernel(previous)


def weight_words(channels_per_group: int) -> int:
    return (channels_per_group + 31) // 32


def pack_weights(bits_pm1: np.ndarray) -> np.ndarray:
    """Pack +-1 weights int8 [O, C/group, KH, KW] into uint32 [O, KH, KW, CW] (bit 1 = -1)."""
    w = np.ascontiguousarray(bits_pm1, dtype=np.int8)
    if w.ndim != 4:
        raise ValueError(f"weights must be [O, C/group, KH, KW], got shape {w.shape}")
    o, cg, kh, kw = w.shape
    out = np.empty((o, kh, kw, weight_words(cg)), dtype=np.uint32)
    _check(_lib().bnn_pack_weights(w.ctypes.data, o, cg, kh, kw, out.ctypes.data), "pack_weights")
    return out


def binary_conv2d(
    x: np.ndarray,
    w_packed: np.ndarray,
    multiplier: np.ndarray,
    bias: np.ndarray,
    *,
    channels_in: int,
    kernel_shape: Sequence[int],
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
    pad_value: int = 1,
    num_threads: int = 1,
    threshold: np.ndarray | None = None,
    residual: np.ndarray | None = None,
    rprelu_shift: np.ndarray | None = None,
    rprelu_slope: np.ndarray | None = None,
    rprelu_bias: np.ndarray | None = None,
) -> np.ndarray:
    """BinaryConv2d (docs/onnx_ops.md) with the native kernel; returns float32 NCHW.

    ``threshold`` ([C]): binarize channel c at threshold[c] instead of 0 (RSign);
    ``residual`` (the output's shape): added after the affine epilogue (a shortcut);
    ``rprelu_shift``, ``rprelu_slope``, ``rprelu_bias`` ([O] each, all three or none; the
    library refuses a partial set): RPReLU after those, ``prelu(y - shift, slope) + bias``."""
    xa = np.ascontiguousarray(x, dtype=np.float32)
    wa = np.ascontiguousarray(w_packed, dtype=np.uint32)
    if xa.ndim != 4 or wa.ndim != 4:
        raise ValueError(f"x must be [N,C,H,W] and w [O,KH,KW,CW]; got {xa.shape}, {wa.shape}")
    if xa.shape[1] != channels_in:
        raise ValueError(f"x has {xa.shape[1]} channels, channels_in={channels_in}")
    o = wa.shape[0]
    kh, kw = (int(k) for k in kernel_shape)
    if group < 1 or channels_in % group or o % group:
        raise ValueError(f"group={group} must divide channels_in={channels_in} and O={o}")
    if wa.shape[1:] != (kh, kw, weight_words(channels_in // group)):
        raise ValueError(
            f"w shape {wa.shape} != [O, {kh}, {kw}, {weight_words(channels_in // group)}]"
        )
    ma = np.ascontiguousarray(multiplier, dtype=np.float32).reshape(-1)
    ba = np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)
    if ma.size != o or ba.size != o:
        raise ValueError(f"multiplier and bias need {o} values, got {ma.size} and {ba.size}")
    p = _Params(
        xa.shape[0],
        xa.shape[1],
        xa.shape[2],
        xa.shape[3],
        o,
        kh,
        kw,
        int(strides[0]),
        int(strides[1]),
        int(dilations[0]),
        int(dilations[1]),
        int(pads[0]),
        int(pads[1]),
        int(pads[2]),
        int(pads[3]),
        group,
        pad_value,
    )
    ho, wo = ctypes.c_int64(), ctypes.c_int64()
    lib = _lib()
    _check(
        lib.bnn_conv2d_output_shape(ctypes.byref(p), ctypes.byref(ho), ctypes.byref(wo)),
        "binary_conv2d",
    )
    y = np.empty((xa.shape[0], o, ho.value, wo.value), dtype=np.float32)
    rprelu = (rprelu_shift, rprelu_slope, rprelu_bias)
    if threshold is None and residual is None and all(v is None for v in rprelu):
        _check(
            lib.bnn_conv2d(
                ctypes.byref(p),
                xa.ctypes.data,
                wa.ctypes.data,
                ma.ctypes.data,
                ba.ctypes.data,
                y.ctypes.data,
                int(num_threads),
            ),
            "binary_conv2d",
        )
        return y
    ta = None if threshold is None else np.ascontiguousarray(threshold, np.float32).reshape(-1)
    if ta is not None and ta.size != channels_in:
        raise ValueError(f"threshold needs {channels_in} values (one per input channel)")
    ra = None if residual is None else np.ascontiguousarray(residual, np.float32)
    if ra is not None and ra.shape != y.shape:
        raise ValueError(f"residual shape {ra.shape} != output shape {y.shape}")
    rp = [None if v is None else np.ascontiguousarray(v, np.float32).reshape(-1) for v in rprelu]
    for what, v in zip(("rprelu_shift", "rprelu_slope", "rprelu_bias"), rp, strict=True):
        if v is not None and v.size != o:
            raise ValueError(f"{what} needs {o} values (one per output channel), got {v.size}")
    fusion = _Fusion(*(None if v is None else v.ctypes.data for v in (ta, ra, *rp)))
    _check(
        lib.bnn_conv2d_fused_ex(
            None,
            ctypes.byref(p),
            xa.ctypes.data,
            wa.ctypes.data,
            ma.ctypes.data,
            ba.ctypes.data,
            ctypes.byref(fusion),
            y.ctypes.data,
            None,
            None,
            int(num_threads),
        ),
        "binary_conv2d",
    )
    return y


def ort_ops_library_path() -> str:
    """Path of the onnxruntime custom-op library registering com.bnn_export ops."""
    path = lib_dir() / ORT_LIB
    if not path.is_file():
        raise NativeLibraryError(
            f"onnxruntime custom-op library {path} was not built (the onnxruntime C/C++ "
            f"headers were not found at build time); {_ORT_FIX}"
        )
    return str(path)
