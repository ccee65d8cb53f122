"""Float layers: convolution, fully connected, batch norm.

A ``BinaryConv2d`` / ``BinaryLinear`` whose binarizer is ``none`` (the float baseline) is a
float conv / linear with ``pre_hardtanh``: its input is clipped to [-1, 1] first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from bnn_export.convert.ops.activations import keras_hardtanh, onnx_hardtanh
from bnn_export.convert.ops.base import Op, OpAttrs, Shape, pair, register, to_numpy
from bnn_export.errors import BnnExportError
from bnn_export.geometry import conv_output_size, minimal_pads
from bnn_export.models.layers import BinaryConv2d, BinaryLinear

if TYPE_CHECKING:
    from bnn_export.convert.graph import Node
    from bnn_export.convert.keras_export import KerasEmitter
    from bnn_export.convert.onnx_export import OnnxEmitter


@dataclass(frozen=True, eq=False)
class ConvGeometry(OpAttrs):
    """Window of a 2-D convolution (per axis: height, width); padding is symmetric."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    @staticmethod
    def of(m: nn.Conv2d | BinaryConv2d) -> dict[str, Any]:
        """The geometry fields of a conv module (keyword arguments)."""
        return {
            "kernel": pair(m.kernel_size),
            "stride": pair(m.stride),
            "padding": pair(m.padding),
            "dilation": pair(m.dilation),
            "groups": int(m.groups),
        }

    def out_hw(self, x: Shape) -> list[int]:
        """Output height and width for input shape ``x`` (NCHW)."""
        k, s, p, d = self.kernel, self.stride, self.padding, self.dilation
        return [conv_output_size(x[2 + i], k[i], s[i], p[i], p[i], d[i]) for i in range(2)]

    def keras_dilation(self) -> tuple[int, int]:
        """Dilation where it matters: 1 along a kernel of size 1 (Keras rejects dilation > 1
        with stride > 1 even then)."""
        k, d = self.kernel, self.dilation
        return (int(d[0]) if k[0] > 1 else 1, int(d[1]) if k[1] > 1 else 1)

    def minimal_pads(self, x: Shape) -> list[tuple[int, int]]:
        """(top, bottom), (left, right): padding to what the last window reads."""
        k, s, p, d = self.kernel, self.stride, self.padding, self.keras_dilation()
        return [minimal_pads(x[2 + i], k[i], s[i], p[i], d[i]) for i in range(2)]


def check_keras_conv(node: Node, a: ConvGeometry) -> None:
    """Keras convolutions take stride or dilation, not both."""
    s, d = a.stride, a.keras_dilation()
    if max(s) > 1 and max(d) > 1:
        raise BnnExportError(
            f"layer {node.label!r}: stride {tuple(s)} together with dilation {tuple(d)} has "
            "no TFLite equivalent (Keras convolutions take one or the other)",
            hint="use stride 1 (and pool) or dilation 1 in that layer, or export with "
            "--format onnx",
        )


def linear_out_shape(node: Node, x: Shape, weight_shape: Shape) -> Shape:
    if x[-1] != weight_shape[1] or len(x) != 2:
        raise BnnExportError(f"layer {node.label!r}: input {x} does not fit {weight_shape}")
    return (1, weight_shape[0])


def hwio(w: np.ndarray) -> np.ndarray:
    """OIHW -> Keras' HWIO kernel layout."""
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0))).astype(np.float32)


@dataclass(frozen=True, eq=False)
class ConvAttrs(ConvGeometry):
    weight: np.ndarray  # [O, I/groups, KH, KW]
    bias: np.ndarray | None
    pre_hardtanh: bool = False


@register
class Conv(Op[ConvAttrs]):
    name = "conv"
    attrs_type = ConvAttrs
    pattern = "Conv2d"
    modules = (nn.Conv2d, BinaryConv2d)

    def from_module(self, name: str, m: nn.Module) -> ConvAttrs | None:
        if isinstance(m, BinaryConv2d):  # float baseline: hardtanh then a float conv
            if m.is_binary:
                return None
            return ConvAttrs(
                **ConvGeometry.of(m), weight=_np(m.weight), bias=None, pre_hardtanh=True
            )
        assert isinstance(m, nn.Conv2d)
        if m.padding_mode != "zeros":
            raise BnnExportError(
                f"layer {name!r}: padding_mode {m.padding_mode!r} is not supported"
            )
        return ConvAttrs(**ConvGeometry.of(m), weight=_np(m.weight), bias=to_numpy(m.bias))

    def out_shape(self, node: Node, inputs: list[Shape]) -> Shape:
        a = self.attrs(node)
        return (1, a.weight.shape[0], *a.out_hw(inputs[0]))

    def to_onnx(self, node: Node, e: OnnxEmitter) -> str:
        a, name, x = self.attrs(node), node.name, e.input(node)
        if a.pre_hardtanh:
            x = onnx_hardtanh(e, x, name, f"{name}_hardtanh")
        ins = [x, e.const(f"{name}_w", a.weight)]
        if a.bias is not None:
            ins.append(e.const(f"{name}_b", a.bias))
        (ph, pw), d = a.padding, a.dilation
        return e.node(
            "Conv",
            ins,
            name,
            kernel_shape=list(a.kernel),
            strides=list(a.stride),
            pads=[ph, pw, ph, pw],
            dilations=list(d),
            group=a.groups,
        )

    def check_keras(self, node: Node) -> None:
        check_keras_conv(node, self.attrs(node))

    def to_keras(self, node: Node, e: KerasEmitter) -> Any:
        a, name, x, layers = self.attrs(node), e.name(node), e.input(node), e.keras.layers
        if a.pre_hardtanh:
            x = keras_hardtanh(e, x, f"{name}_hardtanh")
        # minimal pads: LCE 0.16 turns a symmetric Pad + VALID stride-2 conv into "same"
        # (which pads bottom/right), shifting every window (float convs too)
        pads = a.minimal_pads(e.in_shape(node))
        if any(any(p) for p in pads):
            x = layers.ZeroPadding2D(tuple(pads), name=f"{name}_pad")(x)
        layer = layers.Conv2D(
            a.weight.shape[0],
            a.kernel,
            strides=a.stride,
            padding="valid",
            dilation_rate=a.keras_dilation(),
            groups=a.groups,
            use_bias=a.bias is not None,
            name=name,
        )
        y = layer(x)
        e.set_weights(layer, [hwio(a.weight)] + ([a.bias] if a.bias is not None else []))
        return y


@dataclass(frozen=True, eq=False)
class LinearAttrs(OpAttrs):
    weight: np.ndarray  # [O, I]
    bias: np.ndarray | None
    pre_hardtanh: bool = False


@register
class Linear(Op[LinearAttrs]):
    name = "linear"
    attrs_type = LinearAttrs
    pattern = "Linear"
    modules = (nn.Linear, BinaryLinear)

    def from_module(self, name: str, m: nn.Module) -> LinearAttrs | None:
        if isinstance(m, BinaryLinear):
            return None if m.is_binary else LinearAttrs(_np(m.weight), None, pre_hardtanh=True)
        assert isinstance(m, nn.Linear)
        return LinearAttrs(_np(m.weight), to_numpy(m.bias))

    def out_shape(self, node: Node, inputs: list[Shape]) -> Shape:
        return linear_out_shape(node, inputs[0], self.attrs(node).weight.shape)

    def to_onnx(self, node: Node, e: OnnxEmitter) -> str:
        a, name, x = self.attrs(node), node.name, e.input(node)
        if a.pre_hardtanh:
            x = onnx_hardtanh(e, x, name, f"{name}_hardtanh")
        ins = [x, e.const(f"{name}_w", a.weight)]
        if a.bias is not None:
            ins.append(e.const(f"{name}_b", a.bias))
        return e.node("Gemm", ins, name, transB=1)

    def to_keras(self, node: Node, e: KerasEmitter) -> Any:
        a, name, x = self.attrs(node), e.name(node), e.input(node)
        if a.pre_hardtanh:
            x = keras_hardtanh(e, x, f"{name}_hardtanh")
        layer = e.keras.layers.Dense(a.weight.shape[0], use_bias=a.bias is not None, name=name)
        y = layer(x)
        e.set_weights(layer, [a.weight.T.copy()] + ([a.bias] if a.bias is not None else []))
        return y


@dataclass(frozen=True, eq=False)
class BatchNormAttrs(OpAttrs):
    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    eps: float

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """Batch norm as y = x * scale + shift (per channel)."""
        scale = self.gamma / np.sqrt(self.var + np.float32(self.eps))
        return scale.astype(np.float32), (self.beta - self.mean * scale).astype(np.float32)


@register
class BatchNorm(Op[BatchNormAttrs]):
    """Inference batch norm over channels of [N, C] or [N, C, H, W] (running statistics).
    The onnxruntime target folds one that follows a binary layer into its affine term."""

    name = "bn"
    attrs_type = BatchNormAttrs
    pattern = "BatchNorm1d/2d"
    modules = (nn.BatchNorm1d, nn.BatchNorm2d)

    def from_module(self, name: str, m: nn.Module) -> BatchNormAttrs:
        assert isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)
        if m.running_mean is None or m.running_var is None:
            raise BnnExportError(f"layer {name!r}: batch norm without running statistics")
        ones, zeros = np.ones(m.num_features, np.float32), np.zeros(m.num_features, np.float32)
        return BatchNormAttrs(
            gamma=_np(m.weight) if m.affine else ones,
            beta=_np(m.bias) if m.affine else zeros,
            mean=_np(m.running_mean),
            var=_np(m.running_var),
            eps=float(m.eps),
        )

    def out_shape(self, node: Node, inputs: list[Shape]) -> Shape:
        return inputs[0]

    def to_onnx(self, node: Node, e: OnnxEmitter) -> str:
        a, name, x = self.attrs(node), node.name, e.input(node)
        if len(e.in_shape(node)) == 2:  # [N, C]: Mul + Add broadcast over the batch
            scale, shift = a.folded()
            y = e.node("Mul", [x, e.const(f"{name}_scale", scale)], f"{name}_mul")
            return e.node("Add", [y, e.const(f"{name}_shift", shift)], name)
        params = [e.const(f"{name}_{k}", getattr(a, k)) for k in ("gamma", "beta", "mean", "var")]
        return e.node("BatchNormalization", [x, *params], name, epsilon=a.eps)

    def to_keras(self, node: Node, e: KerasEmitter) -> Any:
        a = self.attrs(node)
        layer = e.keras.layers.BatchNormalization(epsilon=a.eps, name=e.name(node))
        y = layer(e.input(node))
        e.set_weights(layer, [a.gamma, a.beta, a.mean, a.var])
        return y


def _np(t: Any) -> np.ndarray:
    """A tensor that is known to be there, as float32 numpy."""
    out = to_numpy(t)
    if out is None:
        raise BnnExportError("a layer parameter is missing")
    return out
