"""Ops that route tensors: the graph input, identity (and dropout), flatten (and the
reshapes that flatten), the residual add, channel concatenation, and arithmetic with
constants (scalars or per-channel parameters / buffers)."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bnn_export.convert.ops.base import BATCH, Call, NoAttrs, Op, OpAttrs, Shape, register
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
    """``nn.Identity``, and dropout (the identity at inference)."""

    name = "identity"
    pattern = "Identity / Dropout (identity at export)"
    modules = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
    functions = (F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout)

    def from_module(self, name: str, m: nn.Module) -> NoAttrs:
        return NoAttrs()

    def from_call(self, call: Call) -> NoAttrs | None:
        if len(call.tensors) != 1:
            return None
        if call.arg(2, "training", True) is not False:
            raise call.refuse("dropout in training mode (training=True) is not the identity")
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
    pattern = "Flatten / torch.flatten(x, 1) / x.view(N, -1) / reshape"
    modules = (nn.Flatten,)
    functions = (torch.flatten, torch.reshape)
    methods = ("flatten", "view", "reshape")

    def from_module(self, name: str, m: nn.Module) -> NoAttrs:
        assert isinstance(m, nn.Flatten)
        if m.start_dim != 1 or m.end_dim != -1:
            raise BnnExportError(
                f"layer {name!r}: only Flatten(start_dim=1, end_dim=-1) is supported"
            )
        return NoAttrs()

    def from_call(self, call: Call) -> NoAttrs | None:
        if len(call.tensors) != 1:
            return None
        x = call.tensors[0].shape
        features = int(np.prod(x[1:]))
        if call.target in (torch.flatten, "flatten"):
            start, end = call.arg(1, "start_dim", 0), call.arg(2, "end_dim", -1)
            if start != 1 or end % len(x) != len(x) - 1:
                raise call.refuse(
                    f"only flattening dims 1.. (start_dim=1) is supported, got start_dim="
                    f"{start}, end_dim={end}"
                )
            return NoAttrs()
        shape = list(call.args[1:]) or [call.kwargs.get("shape", call.kwargs.get("size"))]
        if len(shape) == 1 and isinstance(shape[0], list | tuple):
            shape = list(shape[0])
        batch_kept = len(shape) == 2 and (
            (shape[0] is BATCH and shape[1] in (-1, features))
            or (shape[0] == -1 and shape[1] == features)
        )
        if not batch_kept:
            raise call.refuse(
                f"only a reshape to [N, {features}] (x.view(x.size(0), -1), "
                f"x.reshape(-1, {features})) is supported, got {shape}"
            )
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

    def from_call(self, call: Call) -> NoAttrs | None:
        if len(call.tensors) != 2 or len(call.args) != 2:
            return None
        if call.kwargs.get("alpha", 1) != 1:
            raise call.refuse("torch.add with alpha is not supported")
        return NoAttrs()

    def out_shape(self, node: Node, inputs: list[Shape]) -> Shape:
        if inputs[0] != inputs[1]:
            raise BnnExportError(f"add {node.name}: shapes {inputs[0]} and {inputs[1]} differ")
        return inputs[0]

    def to_onnx(self, node: Node, e: OnnxEmitter) -> str:
        # onnxruntime: a shortcut onto a binary conv is the op's `residual` input
        fused = e.fuse_residual(node)
        if fused is not None:
            return fused
        return e.node("Add", [e.input(node, 0), e.input(node, 1)], node.name)

    def to_keras(self, node: Node, e: KerasEmitter) -> Any:
        return e.keras.layers.Add(name=e.name(node))([e.input(node, 0), e.input(node, 1)])


@dataclass(frozen=True, eq=False)
class ConcatAttrs(OpAttrs):
    pass


@register
class Concat(Op[ConcatAttrs]):
    """``torch.cat`` on channels (dim 1)."""

    name = "concat"
    attrs_type = ConcatAttrs
    pattern = "torch.cat(..., dim=1)"
    functions = (torch.cat, torch.concat, torch.concatenate)

    def from_call(self, call: Call) -> ConcatAttrs | None:
        tensors = call.tensors
        if not tensors:
            return None
        dim = call.arg(1, "dim", call.kwargs.get("axis", 0))
        rank = len(tensors[0].shape)
        if not isinstance(dim, int) or dim % rank != 1:
            raise call.refuse(f"only concatenation on channels (dim=1) is supported, got dim={dim}")
        return ConcatAttrs()

    def out_shape(self, node: Node, inputs: list[Shape]) -> Shape:
        first = inputs[0]
        for x in inputs[1:]:
            if len(x) != len(first) or x[2:] != first[2:]:
                raise BnnExportError(f"concat {node.name}: shapes {inputs} differ beyond dim 1")
        return (1, sum(x[1] for x in inputs), *first[2:])

    def to_onnx(self, node: Node, e: OnnxEmitter) -> str:
        ins = [e.input(node, i) for i in range(len(node.inputs))]
        return e.node("Concat", ins, node.name, axis=1)

    def to_keras(self, node: Node, e: KerasEmitter) -> Any:
        ins = [e.input(node, i) for i in range(len(node.inputs))]
        if len(ins) == 1:
            return ins[0]
        return e.keras.layers.Concatenate(axis=-1, name=e.name(node))(ins)


_ARITH: dict[Any, str] = {
    operator.add: "Add", torch.add: "Add", "add": "Add", operator.sub: "Sub",
    torch.sub: "Sub", torch.subtract: "Sub", "sub": "Sub", operator.mul: "Mul",
    torch.mul: "Mul", torch.multiply: "Mul", "mul": "Mul", operator.truediv: "Div",
    torch.div: "Div", torch.true_divide: "Div", "div": "Div",
}  # fmt: skip


@dataclass(frozen=True, eq=False)
class ConstArithAttrs(OpAttrs):
    op: str  # "Add" | "Sub" | "Mul" | "Div" (ONNX's names)
    value: np.ndarray  # float32, [] (a scalar) or [C] (per channel)
    reverse: bool = False  # value op x (e.g. 1 - x) instead of x op value


def _per_channel(value: Any, x: Shape) -> np.ndarray | None:
    """``value`` as a scalar ([]) or per-channel ([C]) float32 array, if it broadcasts to
    ``x`` (NCHW / NC) that way, else None."""
    v = np.asarray(value, dtype=np.float32)
    if v.ndim > len(x):
        return None
    full = (1,) * (len(x) - v.ndim) + v.shape
    if any(d != 1 for i, d in enumerate(full) if i != 1) or full[1] not in (1, x[1]):
        return None
    return v.reshape(()) if v.size == 1 else v.reshape(-1)


@register
class ConstArith(Op[ConstArithAttrs]):
    """``x + c``, ``x - c``, ``c - x``, ``x * c``, ``x / c`` with ``c`` a Python number or
    a scalar / per-channel parameter or buffer (``x * self.scale.view(1, -1, 1, 1)``)."""

    name = "const_arith"
    attrs_type = ConstArithAttrs
    pattern = "x +, -, *, / a constant (a number, or a per-channel parameter/buffer)"
    functions = tuple(f for f in _ARITH if not isinstance(f, str))
    methods = tuple(f for f in _ARITH if isinstance(f, str))

    def from_call(self, call: Call) -> ConstArithAttrs | None:
        if len(call.tensors) != 1 or len(call.args) != 2:
            return None
        if call.kwargs.get("alpha", 1) != 1 or call.kwargs.get("rounding_mode") is not None:
            raise call.refuse("alpha / rounding_mode are not supported")
        a, b = call.args
        reverse = not isinstance(a, type(call.tensors[0]))
        x, c = (b, a) if reverse else (a, b)
        value = _per_channel(c, x.shape)
        if value is None:
            raise call.refuse(
                f"only a scalar or a per-channel constant (one value per channel, shaped "
                f"[1, {x.shape[1]}, 1, 1] for NCHW) is supported, got shape "
                f"{np.shape(c)} with a tensor of shape {x.shape}"
            )
        return ConstArithAttrs(_ARITH[call.target], value, reverse)

    def out_shape(self, node: Node, inputs: list[Shape]) -> Shape:
        return inputs[0]

    def to_onnx(self, node: Node, e: OnnxEmitter) -> str:
        a, rank = self.attrs(node), len(e.in_shape(node))
        value = a.value if a.value.ndim == 0 else a.value.reshape(-1, *[1] * (rank - 2))
        c = e.const(f"{node.name}_const", value.astype(np.float32))
        x = e.input(node)
        return e.node(a.op, [c, x] if a.reverse else [x, c], node.name)

    def to_keras(self, node: Node, e: KerasEmitter) -> Any:
        a = self.attrs(node)
        c = a.value.astype(np.float32)  # [] or [C]: broadcasts over NHWC's last axis
        fn = {
            "Add": operator.add,
            "Sub": operator.sub,
            "Mul": operator.mul,
            "Div": operator.truediv,
        }[a.op]
        if a.reverse:
            return e.keras.layers.Lambda(lambda t: fn(c, t), name=e.name(node))(e.input(node))
        return e.keras.layers.Lambda(lambda t: fn(t, c), name=e.name(node))(e.input(node))
