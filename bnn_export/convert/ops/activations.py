"""Float activations: ReLU, Hardtanh / ReLU6 (any bounds), PReLU, softmax, and ReActNet's
RSign and RPReLU (``bnn_export.models.blocks``; leaf modules of the tracer).

An RSign never reaches an emitter: ``graph.fuse_rsign`` folds it into the binary layers it
feeds (their activation becomes ``threshold``), or refuses the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bnn_export.convert.ops.base import Call, NoAttrs, Op, OpAttrs, Shape, register, to_numpy
from bnn_export.errors import BnnExportError
from bnn_export.models.blocks import RPReLU, RSign

if TYPE_CHECKING:
    from bnn_export.convert.graph import Node
    from bnn_export.convert.keras_export import KerasEmitter
    from bnn_export.convert.onnx_export import OnnxEmitter


def onnx_hardtanh(
    e: OnnxEmitter, x: str, prefix: str, output: str, lo: float = -1.0, hi: float = 1.0
) -> str:
    """Clip(x, lo, hi) (constants ``<prefix>_lo`` / ``_hi``), shared with the float
    baseline of binary layers."""
    lo_name = e.const(f"{prefix}_lo", np.float32(lo))
    hi_name = e.const(f"{prefix}_hi", np.float32(hi))
    return e.node("Clip", [x, lo_name, hi_name], output)


def keras_hardtanh(e: KerasEmitter, x: Any, name: str, lo: float = -1.0, hi: float = 1.0) -> Any:
    tf = e.tf
    return e.keras.layers.Lambda(lambda t: tf.clip_by_value(t, lo, hi), name=name)(x)


def channel_const(value: np.ndarray, rank: int) -> np.ndarray:
    """A per-channel [C] array shaped to broadcast over NCHW ([C, 1, 1]) or NC ([C])."""
    return value.astype(np.float32).reshape(-1, *[1] * (rank - 2))


@dataclass(frozen=True, eq=False)
class HardtanhAttrs(OpAttrs):
    lo: float = -1.0
    hi: float = 1.0


@register
class Hardtanh(Op[HardtanhAttrs]):
    """clamp(x, lo, hi): ``nn.Hardtanh(lo, hi)``, ``nn.ReLU6``, ``F.hardtanh``,
    ``F.relu6``, ``torch.clamp`` / ``x.clamp`` with both bounds."""

    name = "hardtanh"
    attrs_type = HardtanhAttrs
    pattern = "Hardtanh(min, max) / ReLU6 / clamp(x, min, max)"
    modules = (nn.Hardtanh,)
    functions = (F.hardtanh, F.relu6, torch.clamp, torch.clip)
    methods = ("clamp", "clip")

    def from_module(self, name: str, m: nn.Module) -> HardtanhAttrs | None:
        assert isinstance(m, nn.Hardtanh)
        return HardtanhAttrs(float(m.min_val), float(m.max_val))

    def from_call(self, call: Call) -> HardtanhAttrs | None:
        if len(call.tensors) != 1:
            return None
        if call.target is F.relu6:
            return HardtanhAttrs(0.0, 6.0)
        lo_key, hi_key = ("min_val", "max_val") if call.target is F.hardtanh else ("min", "max")
        lo = call.arg(1, lo_key, -1.0 if call.target is F.hardtanh else None)
        hi = call.arg(2, hi_key, 1.0 if call.target is F.hardtanh else None)
        if not (isinstance(lo, int | float) and isinstance(hi, int | float)):
            raise call.refuse("only a clamp to two constant numbers (min and max) is supported")
        return HardtanhAttrs(float(lo), float(hi))

    def out_shape(self, node: Node, inputs: list[Shape]) -> Shape:
        return inputs[0]

    def to_onnx(self, node: Node, e: OnnxEmitter) -> str:
        a = self.attrs(node)
        return onnx_hardtanh(e, e.input(node), node.name, node.name, a.lo, a.hi)

    def to_keras(self, node: Node, e: KerasEmitter) -> Any:
        a = self.attrs(node)
        if a.lo == 0.0 and a.hi > 0.0:  # TFLite RELU6 / RELU_N1_TO_1-free: a bounded ReLU
            return e.keras.layers.ReLU(max_value=a.hi, name=e.name(node))(e.input(node))
        return keras_hardtanh(e, e.input(node), e.name(node), a.lo, a.hi)


@register
class ReLU(Op[NoAttrs]):
    name = "relu"
    pattern = "ReLU (module, F.relu, torch.relu, x.relu())"
    modules = (nn.ReLU,)
    functions = (F.relu, torch.relu)
    methods = ("relu",)

    def from_module(self, name: str, m: nn.Module) -> NoAttrs:
        return NoAttrs()

    def from_function(self, target: Callable[..., Any], inputs: int) -> NoAttrs | None:
        return NoAttrs() if inputs == 1 else None

    def from_call(self, call: Call) -> NoAttrs | None:
        return NoAttrs() if len(call.tensors) == 1 else None

    def out_shape(self, node: Node, inputs: list[Shape]) -> Shape:
        return inputs[0]

    def to_onnx(self, node: Node, e: OnnxEmitter) -> str:
        return e.node("Relu", [e.input(node)], node.name)

    def to_keras(self, node: Node, e: KerasEmitter) -> Any:
        return e.keras.layers.ReLU(name=e.name(node))(e.input(node))


@dataclass(frozen=True, eq=False)
class PReLUAttrs(OpAttrs):
    slope: np.ndarray  # [1] (shared) or [C]


def _check_channels(node: Node, x: Shape, *arrays: np.ndarray) -> None:
    for a in arrays:
        if a.size not in (1, x[1]):
            raise BnnExportError(
                f"layer {node.label!r}: {a.size} per-channel parameters for {x[1]} channels"
            )


def _onnx_prelu(e: OnnxEmitter, x: str, slope: np.ndarray, rank: int, prefix: str, out: str) -> str:
    s = slope.astype(np.float32) if slope.size == 1 else channel_const(slope, rank)
    return e.node("PRelu", [x, e.const(f"{prefix}_slope", s)], out)


def _keras_prelu(e: KerasEmitter, x: Any, slope: np.ndarray, rank: int, name: str) -> Any:
    channels = 1 if slope.size == 1 else slope.size
    shared = list(range(1, rank)) if slope.size == 1 else list(range(1, rank - 1))
    layer = e.keras.layers.PReLU(shared_axes=shared or None, name=name)
    y = layer(x)
    alpha = np.full([1] * (rank - 2) + [channels], 0, np.float32)
    alpha[...] = slope.astype(np.float32).reshape(alpha.shape)
    e.set_weights(layer, [alpha])
    return y


@register
class PReLU(Op[PReLUAttrs]):
    """``nn.PReLU`` (one shared slope or one per channel): x where x >= 0, else slope * x."""

    name = "prelu"
    attrs_type = PReLUAttrs
    pattern = "PReLU (shared or per channel)"
    modules = (nn.PReLU,)

    def from_module(self, name: str, m: nn.Module) -> PReLUAttrs:
        assert isinstance(m, nn.PReLU)
        slope = to_numpy(m.weight)
        assert slope is not None
        return PReLUAttrs(slope.reshape(-1))

    def out_shape(self, node: Node, inputs: list[Shape]) -> Shape:
        _check_channels(node, inputs[0], self.attrs(node).slope)
        return inputs[0]

    def to_onnx(self, node: Node, e: OnnxEmitter) -> str:
        rank = len(e.in_shape(node))
        return _onnx_prelu(e, e.input(node), self.attrs(node).slope, rank, node.name, node.name)

    def to_keras(self, node: Node, e: KerasEmitter) -> Any:
        rank = len(e.in_shape(node))
        return _keras_prelu(e, e.input(node), self.attrs(node).slope, rank, e.name(node))


@dataclass(frozen=True, eq=False)
class RSignAttrs(OpAttrs):
    threshold: np.ndarray  # [C]: +1 where x >= threshold[c]


@register
class RSignOp(Op[RSignAttrs]):
    """ReActNet's RSign (``bnn_export.models.blocks.RSign``): fused into the binary layers
    it feeds by ``graph.fuse_rsign`` (their activation becomes ``threshold``); never
    emitted on its own."""

    name = "rsign"
    attrs_type = RSignAttrs
    pattern = "RSign (before binary layers with a plain sign activation)"
    modules = (RSign,)
    leaf = True

    def from_module(self, name: str, m: nn.Module) -> RSignAttrs:
        assert isinstance(m, RSign)
        t = to_numpy(m.threshold)
        assert t is not None
        return RSignAttrs(t.reshape(-1))

    def out_shape(self, node: Node, inputs: list[Shape]) -> Shape:
        _check_channels(node, inputs[0], self.attrs(node).threshold)
        return inputs[0]

    def _unfused(self, node: Node) -> BnnExportError:
        return BnnExportError(
            f"RSign {node.label!r} was not fused into a binary layer (graph.fuse_rsign)"
        )

    def to_onnx(self, node: Node, e: OnnxEmitter) -> str:
        raise self._unfused(node)

    def to_keras(self, node: Node, e: KerasEmitter) -> Any:
        raise self._unfused(node)


@dataclass(frozen=True, eq=False)
class RPReLUAttrs(OpAttrs):
    gamma: np.ndarray  # [C], subtracted first
    slope: np.ndarray  # [C] or [1]
    zeta: np.ndarray  # [C], added last


@register
class RPReLUOp(Op[RPReLUAttrs]):
    """ReActNet's RPReLU (``bnn_export.models.blocks.RPReLU``):
    ``prelu(x - gamma[c], slope) + zeta[c]``, as Sub, PRelu, Add (the same float ops as
    PyTorch, in the same order); onnxruntime: right after a BinaryConv2d, the op's
    ``rprelu_*`` inputs instead (``OnnxEmitter.fuse_rprelu``; the same float ops)."""

    name = "rprelu"
    attrs_type = RPReLUAttrs
    pattern = "RPReLU"
    modules = (RPReLU,)
    leaf = True

    def from_module(self, name: str, m: nn.Module) -> RPReLUAttrs:
        assert isinstance(m, RPReLU)
        gamma, slope, zeta = (to_numpy(t) for t in (m.gamma, m.prelu.weight, m.zeta))
        assert gamma is not None and slope is not None and zeta is not None
        return RPReLUAttrs(gamma.reshape(-1), slope.reshape(-1), zeta.reshape(-1))

    def out_shape(self, node: Node, inputs: list[Shape]) -> Shape:
        a = self.attrs(node)
        _check_channels(node, inputs[0], a.gamma, a.slope, a.zeta)
        return inputs[0]

    def to_onnx(self, node: Node, e: OnnxEmitter) -> str:
        a, name, rank = self.attrs(node), node.name, len(e.in_shape(node))
        fused = e.fuse_rprelu(node, a.gamma, a.slope, a.zeta)
        if fused is not None:
            return fused
        gamma = e.const(f"{name}_gamma", channel_const(a.gamma, rank))
        x = e.node("Sub", [e.input(node), gamma], f"{name}_shifted")
        if not np.any(a.zeta):  # zeta folded into the next binary layer's threshold
            return _onnx_prelu(e, x, a.slope, rank, name, name)
        x = _onnx_prelu(e, x, a.slope, rank, name, f"{name}_prelu")
        return e.node("Add", [x, e.const(f"{name}_zeta", channel_const(a.zeta, rank))], name)

    def to_keras(self, node: Node, e: KerasEmitter) -> Any:
        a, name, rank = self.attrs(node), e.name(node), len(e.in_shape(node))
        layers = e.keras.layers
        gamma, zeta = a.gamma.astype(np.float32), a.zeta.astype(np.float32)
        x = layers.Lambda(lambda t: t - gamma, name=f"{name}_shift")(e.input(node))
        x = _keras_prelu(e, x, a.slope, rank, f"{name}_prelu")
        return layers.Lambda(lambda t: t + zeta, name=name)(x)


@dataclass(frozen=True, eq=False)
class SoftmaxAttrs(OpAttrs):
    dim: int = 1


@register
class Softmax(Op[SoftmaxAttrs]):
    """Softmax over channels (``nn.Softmax(dim=1)``, ``F.softmax(x, 1)``,
    ``x.softmax(1)``; dim -1 of an [N, C] tensor)."""

    name = "softmax"
    attrs_type = SoftmaxAttrs
    pattern = "Softmax over channels (dim=1)"
    modules = (nn.Softmax,)
    functions = (F.softmax, torch.softmax)
    methods = ("softmax",)

    def from_module(self, name: str, m: nn.Module) -> SoftmaxAttrs:
        assert isinstance(m, nn.Softmax)
        if m.dim is None:
            raise BnnExportError(f"layer {name!r}: Softmax needs an explicit dim (1)")
        return SoftmaxAttrs(int(m.dim))

    def from_call(self, call: Call) -> SoftmaxAttrs | None:
        if len(call.tensors) != 1:
            return None
        dim = call.arg(1, "dim")
        if not isinstance(dim, int):
            raise call.refuse("softmax needs an explicit integer dim (1)")
        if call.kwargs.get("dtype") is not None:
            raise call.refuse("softmax with a dtype is not supported")
        return SoftmaxAttrs(dim)

    def out_shape(self, node: Node, inputs: list[Shape]) -> Shape:
        x, dim = inputs[0], self.attrs(node).dim
        if dim % len(x) != 1:
            raise BnnExportError(
                f"softmax {node.label!r}: only over channels (dim 1) is supported, got dim "
                f"{dim} of a rank-{len(x)} tensor"
            )
        return x

    def to_onnx(self, node: Node, e: OnnxEmitter) -> str:
        return e.node("Softmax", [e.input(node)], node.name, axis=1)

    def to_keras(self, node: Node, e: KerasEmitter) -> Any:
        return e.keras.layers.Softmax(axis=-1, name=e.name(node))(e.input(node))
