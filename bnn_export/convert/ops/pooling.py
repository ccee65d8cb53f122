"""Pooling: Max/AvgPool2d without padding, and global average pooling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from bnn_export.convert.ops.base import NoAttrs, Op, OpAttrs, Shape, pair, register
from bnn_export.errors import BnnExportError
from bnn_export.geometry import conv_output_size

if TYPE_CHECKING:
    from bnn_export.convert.graph import Node
    from bnn_export.convert.keras_export import KerasEmitter
    from bnn_export.convert.onnx_export import OnnxEmitter


@dataclass(frozen=True, eq=False)
class PoolAttrs(OpAttrs):
    kernel: tuple[int, int]
    stride: tuple[int, int]


class _Pool(Op[PoolAttrs]):
    attrs_type = PoolAttrs
    onnx_op: str
    keras_layer: str

    def from_module(self, name: str, m: nn.Module) -> PoolAttrs:
        assert isinstance(m, nn.MaxPool2d | nn.AvgPool2d)
        k, s = pair(m.kernel_size), pair(m.stride if m.stride is not None else m.kernel_size)
        if (
            pair(m.padding) != (0, 0)
            or getattr(m, "ceil_mode", False)
            or (isinstance(m, nn.MaxPool2d) and pair(m.dilation) != (1, 1))
        ):
            raise BnnExportError(
                f"layer {name!r}: pooling with padding/ceil_mode/dilation is not supported"
            )
        return PoolAttrs(kernel=k, stride=s)

    def out_shape(self, node: Node, inputs: list[Shape]) -> Shape:
        a, x = self.attrs(node), inputs[0]
        hw = [conv_output_size(x[2 + i], a.kernel[i], a.stride[i], 0, 0) for i in range(2)]
        return (1, x[1], *hw)

    def to_onnx(self, node: Node, e: OnnxEmitter) -> str:
        a = self.attrs(node)
        return e.node(
            self.onnx_op,
            [e.input(node)],
            node.name,
            kernel_shape=list(a.kernel),
            strides=list(a.stride),
        )

    def to_keras(self, node: Node, e: KerasEmitter) -> Any:
        a = self.attrs(node)
        layer = getattr(e.keras.layers, self.keras_layer)
        return layer(a.kernel, a.stride, padding="valid", name=e.name(node))(e.input(node))


@register
class MaxPool(_Pool):
    name = "maxpool"
    pattern = "MaxPool2d"
    modules = (nn.MaxPool2d,)
    onnx_op = "MaxPool"
    keras_layer = "MaxPooling2D"


@register
class AvgPool(_Pool):
    name = "avgpool"
    pattern = "AvgPool2d"
    modules = (nn.AvgPool2d,)
    onnx_op = "AveragePool"
    keras_layer = "AveragePooling2D"


@register
class GlobalAvgPool(Op[NoAttrs]):
    name = "gap"
    pattern = "AdaptiveAvgPool2d(1)"
    modules = (nn.AdaptiveAvgPool2d,)

    def from_module(self, name: str, m: nn.Module) -> NoAttrs:
        assert isinstance(m, nn.AdaptiveAvgPool2d)
        if pair(m.output_size) != (1, 1):
            raise BnnExportError(f"layer {name!r}: only AdaptiveAvgPool2d(1) is supported")
        return NoAttrs()

    def out_shape(self, node: Node, inputs: list[Shape]) -> Shape:
        return (1, inputs[0][1], 1, 1)

    def to_onnx(self, node: Node, e: OnnxEmitter) -> str:
        return e.node("GlobalAveragePool", [e.input(node)], node.name)

    def to_keras(self, node: Node, e: KerasEmitter) -> Any:
        layer = e.keras.layers.GlobalAveragePooling2D(keepdims=True, name=e.name(node))
        return layer(e.input(node))
