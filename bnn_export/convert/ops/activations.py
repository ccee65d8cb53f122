"""Float activations: ReLU and Hardtanh(-1, 1)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from bnn_export.convert.ops.base import NoAttrs, Op, Shape, register

if TYPE_CHECKING:
    from bnn_export.convert.graph import Node
    from bnn_export.convert.keras_export import KerasEmitter
    from bnn_export.convert.onnx_export import OnnxEmitter


def onnx_hardtanh(e: OnnxEmitter, x: str, prefix: str, output: str) -> str:
    """Clip(x, -1, 1) (constants ``<prefix>_lo`` / ``_hi``), shared with the float
    baseline of binary layers."""
    lo = e.const(f"{prefix}_lo", np.float32(-1))
    hi = e.const(f"{prefix}_hi", np.float32(1))
    return e.node("Clip", [x, lo, hi], output)


def keras_hardtanh(e: KerasEmitter, x: Any, name: str) -> Any:
    tf = e.tf
    return e.keras.layers.Lambda(lambda t: tf.clip_by_value(t, -1.0, 1.0), name=name)(x)


@register
class Hardtanh(Op[NoAttrs]):
    name = "hardtanh"
    pattern = "Hardtanh(-1, 1)"
    modules = (nn.Hardtanh,)

    def from_module(self, name: str, m: nn.Module) -> NoAttrs | None:
        assert isinstance(m, nn.Hardtanh)
        return NoAttrs() if (m.min_val, m.max_val) == (-1.0, 1.0) else None

    def out_shape(self, node: Node, inputs: list[Shape]) -> Shape:
        return inputs[0]

    def to_onnx(self, node: Node, e: OnnxEmitter) -> str:
        return onnx_hardtanh(e, e.input(node), node.name, node.name)

    def to_keras(self, node: Node, e: KerasEmitter) -> Any:
        return keras_hardtanh(e, e.input(node), e.name(node))


@register
class ReLU(Op[NoAttrs]):
    name = "relu"
    pattern = "ReLU"
    modules = (nn.ReLU,)

    def from_module(self, name: str, m: nn.Module) -> NoAttrs:
        return NoAttrs()

    def out_shape(self, node: Node, inputs: list[Shape]) -> Shape:
        return inputs[0]

    def to_onnx(self, node: Node, e: OnnxEmitter) -> str:
        return e.node("Relu", [e.input(node)], node.name)

    def to_keras(self, node: Node, e: KerasEmitter) -> Any:
        return e.keras.layers.ReLU(name=e.name(node))(e.input(node))
