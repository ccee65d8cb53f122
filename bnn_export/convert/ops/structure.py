"""Ops that route tensors: the graph input, identity, flatten and the residual add."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from bnn_export.convert.ops.base import NoAttrs, Op, Shape, register
from bnn_export.errors import BnnExportError

if TYPE_CHECKING:
    from bnn_export.convert.graph import Node
    from bnn_export.convert.keras_export import KerasEmitter
    from bnn_export.convert.onnx_export import OnnxEmitter


@register
class Input(Op[NoAttrs]):
    """The model input (an fx placeholder), NCHW; tensor ``input`` in both formats."""

    name = "input"

    def out_shape(self, node: Node, inputs: list[Shape]) -> Shape:
        return inputs[0]  # the graph's input shape (infer_shapes passes it)

    def to_onnx(self, node: Node, e: OnnxEmitter) -> str:
        return "input"

    def to_keras(self, node: Node, e: KerasEmitter) -> Any:
        return e.model_input


@register
class Identity(Op[NoAttrs]):
    name = "identity"
    pattern = "Identity"
    modules = (nn.Identity,)

    def from_module(self, name: str, m: nn.Module) -> NoAttrs:
        return NoAttrs()

    def out_shape(self, node: Node, inputs: list[Shape]) -> Shape:
        return inputs[0]

    def to_onnx(self, node: Node, e: OnnxEmitter) -> str:
        return e.node("Identity", [e.input(node)], node.name)

    def to_keras(self, node: Node, e: KerasEmitter) -> Any:
        return e.input(node)


@register
class Flatten(Op[NoAttrs]):
    """[N, C, H, W] -> [N, C*H*W] in PyTorch's C, H, W order (Keras: permuted from NHWC
    first, so dense layers keep their weights)."""

    name = "flatten"
    pattern = "Flatten (module or torch.flatten)"
    modules = (nn.Flatten,)
    functions = (torch.flatten,)

    def from_module(self, name: str, m: nn.Module) -> NoAttrs:
        return NoAttrs()

    def from_function(self, target: Callable[..., Any], inputs: int) -> NoAttrs:
        return NoAttrs()

    def out_shape(self, node: Node, inputs: list[Shape]) -> Shape:
        return (1, int(np.prod(inputs[0][1:])))

    def to_onnx(self, node: Node, e: OnnxEmitter) -> str:
        return e.node("Flatten", [e.input(node)], node.name, axis=1)

    def to_keras(self, node: Node, e: KerasEmitter) -> Any:
        x, name, layers = e.input(node), e.name(node), e.keras.layers
        if len(e.in_shape(node)) == 2:
            return x
        return layers.Flatten(name=name)(layers.Permute((3, 1, 2), name=f"{name}_to_chw")(x))


@register
class Add(Op[NoAttrs]):
    """Elementwise sum of two tensors of the same shape (residual shortcuts)."""

    name = "add"
    pattern = "+ (operator.add, torch.add)"
    functions = (operator.add, torch.add)

    def from_function(self, target: Callable[..., Any], inputs: int) -> NoAttrs | None:
        return NoAttrs() if inputs == 2 else None

    def out_shape(self, node: Node, inputs: list[Shape]) -> Shape:
        if inputs[0] != inputs[1]:
            raise BnnExportError(f"add {node.name}: shapes {inputs[0]} and {inputs[1]} differ")
        return inputs[0]

    def to_onnx(self, node: Node, e: OnnxEmitter) -> str:
        return e.node("Add", [e.input(node, 0), e.input(node, 1)], node.name)

    def to_keras(self, node: Node, e: KerasEmitter) -> Any:
        return e.keras.layers.Add(name=e.name(node))([e.input(node, 0), e.input(node, 1)])
