"""Convolution/pooling geometry shared by the export graph, the ONNX reference ops and
the Keras/Larq layers (pure integers: no torch, onnx or TensorFlow import)."""

from __future__ import annotations


def conv_output_size(
    size: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int = 1
) -> int:
    """Output length of a convolution or pooling window along one axis."""
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def minimal_pads(
    size: int, kernel: int, stride: int, padding: int, dilation: int
) -> tuple[int, int]:
    """PyTorch's symmetric ``padding`` as (begin, end), keeping at the end only what the
    last window reads: the same outputs, and no symmetric Pad + VALID stride-2 conv for
    LCE 0.16 to mistake for "same" padding."""
    span = (kernel - 1) * dilation + 1
    out = conv_output_size(size, kernel, stride, padding, padding, dilation)
    return padding, max(0, (out - 1) * stride + span - size - padding)
