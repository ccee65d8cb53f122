"""Pooling: Max/AvgPool2d (padding and ceil_mode with PyTorch's semantics), and global
average pooling (``AdaptiveAvgPool2d(1)``, ``x.mean((2, 3))``).

PyTorch's rules, followed exactly: max pooling pads with -inf; average pooling divides by
the window clipped to the padded input (``count_include_pad=True``) or to the input
(``False``); with ``ceil_mode`` a last, partial window is added where it starts inside the
input or the left/top padding. Emission: ONNX pads / ``count_include_pad`` where they
express that; otherwise (and in Keras, whose SAME padding puts the pad elsewhere) an
explicit pad (-inf for max, 0 for average), a VALID pool, and for average pooling a
constant per-position factor k*k / divisor where the divisor is not k*k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bnn_export.convert.ops.base import Call, Op, OpAttrs, Shape, pair, register
from bnn_export.errors import BnnExportError

if TYPE_CHECKING:
    from bnn_export.convert.graph import Node
    from bnn_export.convert.keras_export import KerasEmitter
    from bnn_export.convert.onnx_export import OnnxEmitter


def pool_output_size(size: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """PyTorch's pooling output size (``pooling_output_shape``)."""
    num = size + 2 * p - k
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1  # the last window must start inside the input or the left padding
    return out


@dataclass(frozen=True, eq=False)
class PoolAttrs(OpAttrs):
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)
    ceil_mode: bool = False
    count_include_pad: bool = True  # average pooling only

    def out_hw(self, x: Shape) -> list[int]:
        k, s, p = self.kernel, self.stride, self.padding
        return [pool_output_size(x[2 + i], k[i], s[i], p[i], self.ceil_mode) for i in range(2)]

    def end_pads(self, x: Shape) -> list[int]:
        """Padding at the bottom / right that the last window reads (p, or more in ceil
        mode, or less where the floor mode leaves input rows unread: never negative)."""
        k, s, p = self.kernel, self.stride, self.padding
        out = self.out_hw(x)
        return [max(0, (out[i] - 1) * s[i] + k[i] - x[2 + i] - p[i]) for i in range(2)]

    def plain(self, x: Shape) -> bool:
        """No padding, and ceil_mode adds no window: a VALID pool."""
        return self.padding == (0, 0) and self.end_pads(x) == [0, 0]

    def divisor_factor(self, x: Shape) -> np.ndarray | None:
        """Average pooling as a VALID pool (divisor k*k) over the zero-padded input times
        this [OH, OW] factor (k*k / PyTorch's divisor); None where it is all ones."""
        k, s, p = self.kernel, self.stride, self.padding
        out = self.out_hw(x)
        counts = []
        for i in range(2):
            start = np.arange(out[i]) * s[i] - p[i]
            end = np.minimum(start + k[i], x[2 + i] + p[i])
            if not self.count_include_pad:
                end = np.minimum(end, x[2 + i])
                start = np.maximum(start, 0)
            counts.append(end - start)
        divisor = np.outer(counts[0], counts[1]).astype(np.float64)
        factor = (k[0] * k[1] / divisor).astype(np.float32)
        return None if np.all(factor == 1) else factor


class _Pool(Op[PoolAttrs]):
    attrs_type = PoolAttrs
    onnx_op: str
    keras_layer: str
    max: bool

    def from_module(self, name: str, m: nn.Module) -> PoolAttrs:
        assert isinstance(m, nn.MaxPool2d | nn.AvgPool2d)
        k, s = pair(m.kernel_size), pair(m.stride if m.stride is not None else m.kernel_size)
        if isinstance(m, nn.MaxPool2d) and (pair(m.dilation) != (1, 1) or m.return_indices):
            raise BnnExportError(
                f"layer {name!r}: max pooling with dilation or return_indices is not supported"
            )
        if isinstance(m, nn.AvgPool2d) and m.divisor_override is not None:
            raise BnnExportError(f"layer {name!r}: AvgPool2d's divisor_override is not supported")
        p = pair(m.padding)
        if any(p[i] > k[i] // 2 for i in range(2)):
            raise BnnExportError(f"layer {name!r}: padding {p} is more than half the kernel {k}")
        include = bool(getattr(m, "count_include_pad", True))
        return PoolAttrs(
            kernel=k, stride=s, padding=p, ceil_mode=bool(m.ceil_mode), count_include_pad=include
        )

    def out_shape(self, node: Node, inputs: list[Shape]) -> Shape:
        a, x = self.attrs(node), inputs[0]
        hw = a.out_hw(x)
        if len(x) != 4 or min(hw) < 1:
            raise BnnExportError(f"pooling {node.label!r}: input {x} is too small or not NCHW")
        return (1, x[1], *hw)

    def to_onnx(self, node: Node, e: OnnxEmitter) -> str:
        a, x, in_shape = self.attrs(node), e.input(node), e.in_shape(node)
        if a.plain(in_shape):  # (what existing models emit, byte for byte)
            return e.node(
                self.onnx_op,
                [x],
                node.name,
                kernel_shape=list(a.kernel),
                strides=list(a.stride),
            )
        (ph, pw), (eh, ew) = a.padding, a.end_pads(in_shape)
        factor = None if self.max else a.divisor_factor(in_shape)
        if self.max or factor is None or not a.count_include_pad:
            # ONNX pads express it: -inf padding (max), the divisor (average: k*k, or
            # the input elements of the window with count_include_pad=0)
            attrs: dict[str, Any] = {}
            if not self.max:
                attrs["count_include_pad"] = int(a.count_include_pad)
            return e.node(
                self.onnx_op,
                [x],
                node.name,
                kernel_shape=list(a.kernel),
                strides=list(a.stride),
                pads=[ph, pw, eh, ew],
                **attrs,
            )
        # average pooling whose divisor ONNX pads cannot express (ceil mode's clipped last
        # window): zero pad, VALID average (divisor k*k), times k*k / PyTorch's divisor
        widths = e.const(f"{node.name}_pads", np.array([0, 0, ph, pw, 0, 0, eh, ew], np.int64))
        padded = e.node("Pad", [x, widths], f"{node.name}_padded", mode="constant")
        pooled = e.node(
            self.onnx_op,
            [padded],
            f"{node.name}_sum",
            kernel_shape=list(a.kernel),
            strides=list(a.stride),
        )
        return e.node(
            "Mul", [pooled, e.const(f"{node.name}_divisor", factor[None, None])], node.name
        )

    def to_keras(self, node: Node, e: KerasEmitter) -> Any:
        a, x, in_shape = self.attrs(node), e.input(node), e.in_shape(node)
        layer = getattr(e.keras.layers, self.keras_layer)
        name = e.name(node)
        if a.plain(in_shape):
            return layer(a.kernel, a.stride, padding="valid", name=name)(x)
        tf = e.tf
        (ph, pw), (eh, ew) = a.padding, a.end_pads(in_shape)
        paddings = [[0, 0], [ph, eh], [pw, ew], [0, 0]]
        fill = -np.inf if self.max else 0.0
        x = e.keras.layers.Lambda(
            lambda t: tf.pad(t, paddings, constant_values=fill), name=f"{name}_pad"
        )(x)
        factor = None if self.max else a.divisor_factor(in_shape)
        y = layer(
            a.kernel, a.stride, padding="valid", name=name if factor is None else f"{name}_pool"
        )(x)
        if factor is None:
            return y
        f = factor[None, :, :, None]
        return e.keras.layers.Lambda(lambda t: t * f, name=name)(y)


@register
class MaxPool(_Pool):
    name = "maxpool"
    pattern = "MaxPool2d (padding, ceil_mode)"
    modules = (nn.MaxPool2d,)
    onnx_op = "MaxPool"
    keras_layer = "MaxPooling2D"
    max = True


@register
class AvgPool(_Pool):
    name = "avgpool"
    pattern = "AvgPool2d (padding, ceil_mode, count_include_pad)"
    modules = (nn.AvgPool2d,)
    onnx_op = "AveragePool"
    keras_layer = "AveragePooling2D"
    max = False


@dataclass(frozen=True, eq=False)
class GapAttrs(OpAttrs):
    keepdim: bool = True  # [N, C, 1, 1]; else [N, C]


@register
class GlobalAvgPool(Op[GapAttrs]):
    name = "gap"
    attrs_type = GapAttrs
    pattern = "AdaptiveAvgPool2d(1) / x.mean((2, 3))"
    modules = (nn.AdaptiveAvgPool2d,)
    functions = (F.adaptive_avg_pool2d, torch.mean)
    methods = ("mean",)

    def from_module(self, name: str, m: nn.Module) -> GapAttrs:
        assert isinstance(m, nn.AdaptiveAvgPool2d)
        if pair(m.output_size) != (1, 1):
            raise BnnExportError(f"layer {name!r}: only AdaptiveAvgPool2d(1) is supported")
        return GapAttrs()

    def from_call(self, call: Call) -> GapAttrs | None:
        if len(call.tensors) != 1:
            return None
        rank = len(call.tensors[0].shape)
        if call.target is F.adaptive_avg_pool2d:
            size = call.arg(1, "output_size")
            if size not in (1, (1, 1), [1, 1]):
                raise call.refuse("only adaptive average pooling to 1x1 is supported")
            return GapAttrs()
        dim = call.arg(1, "dim")
        dims = (
            {int(d) % rank for d in (dim if isinstance(dim, list | tuple) else [dim])}
            if (dim is not None)
            else set()
        )
        if rank != 4 or dims != {2, 3} or call.kwargs.get("dtype") is not None:
            raise call.refuse(
                f"only the mean over the spatial axes (2, 3) of an NCHW tensor is supported, "
                f"got dim={dim!r} on a rank-{rank} tensor"
            )
        return GapAttrs(keepdim=bool(call.arg(2, "keepdim", False)))

    def out_shape(self, node: Node, inputs: list[Shape]) -> Shape:
        x = inputs[0]
        if len(x) != 4:
            raise BnnExportError(f"global pooling {node.label!r}: input {x} is not NCHW")
        return (1, x[1], 1, 1) if self.attrs(node).keepdim else (1, x[1])

    def to_onnx(self, node: Node, e: OnnxEmitter) -> str:
        if self.attrs(node).keepdim:
            return e.node("GlobalAveragePool", [e.input(node)], node.name)
        pooled = e.node("GlobalAveragePool", [e.input(node)], f"{node.name}_gap")
        return e.node("Flatten", [pooled], node.name, axis=1)

    def to_keras(self, node: Node, e: KerasEmitter) -> Any:
        keep = self.attrs(node).keepdim
        layer = e.keras.layers.GlobalAveragePooling2D(keepdims=keep, name=e.name(node))
        return layer(e.input(node))
