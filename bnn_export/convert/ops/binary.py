"""Binary layers: ``BinaryConv2d`` -> ``bconv``, ``BinaryLinear`` -> ``blinear``.

Their input is binarized (+1 where x >= 0, after the binarizer's float preprocessing:
per-channel threshold, SiMaN's centring, SD-BNN's SE shift), their weights are +-1 bits
times a per-output-channel scale (``WeightExport``). Per target:

- ONNX ``onnxruntime``: ``com.bnn_export::BinaryConv2d`` (bit-packed weights, the scale
  and a following batch norm folded into multiplier/bias; docs/onnx_ops.md);
- ONNX ``openvino``: ``FakeQuantize(levels=2)`` + a standard Conv with +-1 weights, which
  OpenVINO runs as BinaryConvolution (or sign + exact float Conv where it cannot:
  ``runtime_rules``);
- ONNX ``reference``: sign as Where + a float Conv;
- Keras/LCE: a larq ``QuantConv2D`` with the ``ste_sign`` input quantizer and a constant
  +-scale kernel, which LCE converts to ``LceBconv2d``; what LCE 0.16 cannot make 1-bit
  (``lce_float_reason``) is an exact float conv over sign(x). A binary linear layer is a
  1x1 binary conv on a (1, 1, F) map (LCE has no binary dense op).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from bnn_export.binarizers.exports import ActivationExport, WeightExport
from bnn_export.convert.ops.base import Op, OpAttrs, Shape, register
from bnn_export.convert.ops.float_layers import (
    ConvGeometry,
    check_keras_conv,
    hwio,
    linear_out_shape,
)
from bnn_export.convert.ops.runtime_rules import (
    lce_same,
    lce_scale_reason,
    openvino_channels_ok,
    openvino_conv_ok,
)
from bnn_export.errors import BnnExportError
from bnn_export.models.layers import BinaryConv2d, BinaryLinear, _BinaryBase

if TYPE_CHECKING:
    from bnn_export.convert.graph import Node
    from bnn_export.convert.keras_export import KerasEmitter
    from bnn_export.convert.onnx_export import OnnxEmitter

#: FakeQuantize(levels=2) input range for OpenVINO's sign: its CPU plugin maps
#: x > (lo + hi) / 2 to +1 (measured), so [-2 * tiny, 0] (tiny = 2^-126, the smallest
#: normal float32) puts the threshold at -tiny: x == 0 maps to +1 like everywhere else,
#: and only x in (-2^-126, 0) (denormals, flushed to 0 there) deviates from x >= 0.
#: (Until 0.x the range was [-2^-20, 2^-21], which also sent (-2^-22, 0) to +1: seen once
#: in a full-size Bi-Real Net parity run.)
OPENVINO_TINY = float(np.finfo(np.float32).tiny)
OPENVINO_FQ_LOW, OPENVINO_FQ_HIGH = -2.0 * OPENVINO_TINY, 0.0


def openvino_sign_range(k: int = 0) -> tuple[np.float32, np.float32]:
    """[lo, hi] binarizing at 0 for the k-th layer binarizing one tensor: wider by
    2 * k * tiny on both sides, the same midpoint -tiny (all exact in float32)."""
    return (
        np.float32(OPENVINO_FQ_LOW - 2 * k * OPENVINO_TINY),
        np.float32(OPENVINO_FQ_HIGH + 2 * k * OPENVINO_TINY),
    )


OPENVINO_DOMAIN = "org.openvinotoolkit"


def openvino_threshold_range(threshold: np.ndarray, k: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """FakeQuantize(levels=2) input ranges [lo, hi] per channel binarizing x at threshold t
    (+1 where x >= t) in OpenVINO's CPU plugin, which maps x > (lo + hi) / 2 to +1
    (measured; tests/test_export_ops.py checks the signs exactly): lo = t - 2 - k ulps,
    hi = t + k ulps, whose midpoint is t - 1 ulp, so x >= t is exactly x > midpoint. ``k``
    widens the range (the k-th layer binarizing the same tensor the same way, see
    ``_onnx_sign_conv``) without moving the midpoint. t = 0 keeps the plain sign's range
    (``OPENVINO_FQ_LOW``/``HIGH``: a denormal midpoint is flushed to 0 there)."""
    t = np.asarray(threshold, np.float32).reshape(-1)
    lo, hi = _ulps_apart(t, 2 + k, k)
    zero = _near_zero(t)
    lo[zero], hi[zero] = openvino_sign_range(k)
    return lo, hi


def openvino_below_range(threshold: np.ndarray, k: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi] per channel whose midpoint is threshold t itself (lo, hi = t -/+ (1 + k)
    ulps): OpenVINO's x > midpoint -> +1 is then exactly the negation of x <= t (the
    layer flips those input channels' weights to match). Near t = 0 the ulps are
    denormals, which OpenVINO flushes (lo == hi gave NaN outputs): [-m, m] with
    m = 2 (1 + k) tiny."""
    t = np.asarray(threshold, np.float32).reshape(-1)
    lo, hi = _ulps_apart(t, 1 + k, 1 + k)
    zero = _near_zero(t)
    m = np.float32(2 * (1 + k) * OPENVINO_TINY)
    lo[zero], hi[zero] = -m, m
    return lo, hi


def _ulps_apart(t: np.ndarray, down: int, up: int) -> tuple[np.ndarray, np.ndarray]:
    """(t moved ``down`` float32 ulps toward -inf, t moved ``up`` ulps toward +inf)."""
    lo, hi = t.astype(np.float32), t.astype(np.float32)
    for _ in range(down):
        lo = np.nextafter(lo, np.float32(-np.inf))
    for _ in range(up):
        hi = np.nextafter(hi, np.float32(np.inf))
    return lo, hi


def _near_zero(t: np.ndarray) -> np.ndarray:
    """Thresholds whose ulp neighbours reach the denormals OpenVINO flushes to 0."""
    return np.abs(t) < 4 * np.finfo(np.float32).tiny


@dataclass(frozen=True, eq=False)
class BinaryLinearAttrs(OpAttrs):
    weights: WeightExport  # bits [O, I]
    activation: ActivationExport
    pad_value: float = 1.0


@dataclass(frozen=True, eq=False)
class BinaryConvAttrs(ConvGeometry):
    weights: WeightExport  # bits [O, I/groups, KH, KW]
    activation: ActivationExport
    pad_value: float = 1.0  # value of padded binarized inputs: +1 or 0


_NO_PADDING = ConvGeometry(kernel=(1, 1), stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1)


def _binary_fields(m: _BinaryBase) -> dict[str, Any]:
    weights = m.export_weights()
    if weights.ternary:
        raise BnnExportError(
            f"layer {m!r} has pruned (zero) weights; binary conv ops cannot express 0",
            hint="export a model trained without --prune-rate",
        )
    return {
        "weights": weights,
        "activation": m.export_activation(),
        "pad_value": float(getattr(m, "pad_value", 1.0)),
    }


class BinaryOp(Op[Any]):
    """What binary conv and binary linear share; ``geometry`` is the conv a linear layer
    becomes (1x1 on a 1x1 map)."""

    binary = True
    linear: bool

    def geometry(self, node: Node) -> ConvGeometry:
        a = self.attrs(node)
        return _NO_PADDING if self.linear else a

    def openvino_binary(self, node: Node, in_shape: Shape) -> bool:
        """Whether OpenVINO runs the layer as BinaryConvolution (else an exact float conv)."""
        if self.linear:
            return openvino_channels_ok(in_shape)
        return openvino_conv_ok(self.attrs(node), self.attrs(node).pad_value, in_shape)

    def lce_float_reason(self, node: Node, in_shape: Shape) -> str | None:
        """Why LCE 0.16 cannot run the layer as ``LceBconv2d`` (None if it can)."""
        a = self.attrs(node)
        if reason := lce_scale_reason(a.weights.scale):
            return reason
        if self.linear:
            return None
        if a.groups > 1:
            return "grouped (LCE's default kernel cannot run grouped binary convs)"
        k, s, p, d = a.kernel, a.stride, a.padding, a.keras_dilation()
        pad_value = float(a.pad_value)
        if any(p) and pad_value == 0.0 and not lce_same(k, s, p, d, in_shape, pad_value):
            return "zero padding that LCE cannot fuse"
        return None

    # ------------------------------------------------------------------ ONNX

    def to_onnx(self, node: Node, e: OnnxEmitter) -> str:
        a, name, linear = self.attrs(node), node.name, self.linear
        w: WeightExport = a.weights
        in_shape = e.in_shape(node)
        # a per-channel threshold (RSign) leaves no float op before the layer: onnxruntime,
        # the op's own `threshold` input; openvino, FakeQuantize's per-channel range (and
        # the layer stays BinaryConvolution). The exposed `_binput` (accumulator tests) is
        # still x - t, the tensor whose sign the layer takes
        if a.activation.below is not None and e.target != "openvino":
            raise BnnExportError(
                f"layer {node.label!r}: a reversed threshold ('below') is only exported for "
                "OpenVINO (internal error: it comes from that target's affine folding)"
            )
        fused_threshold = a.activation.kind == "threshold" and (
            e.target == "onnxruntime"
            or (e.target == "openvino" and self.openvino_binary(node, in_shape))
        )
        x = (
            e.input(node)
            if fused_threshold and not e.accumulators
            else _onnx_binarized_input(e, node, a.activation, e.input(node), len(in_shape))
        )
        op_input = e.input(node) if fused_threshold else x
        if e.accumulators:
            out_shape = [len(w.bits), 1, 1] if linear else list(e.shapes[node.name][1:])
            e.extra_outputs += [
                (e.node("Identity", [x], f"{name}_binput"), ["N", *in_shape[1:]]),
                (f"{name}_acc", ["N", *out_shape]),
            ]
        multiplier = w.scale.astype(np.float32)
        bias = np.zeros_like(multiplier)
        consumers = e.graph.consumers(node.name)
        if e.target == "onnxruntime" and len(consumers) == 1 and consumers[0].op == "bn":
            bn_scale, bn_shift = consumers[0].attrs.folded()
            multiplier, bias = multiplier * bn_scale, bn_shift
            e.folded.add(consumers[0].name)
        bits4 = w.bits.reshape(*w.bits.shape, 1, 1) if linear else w.bits
        g = self.geometry(node)
        ph, pw = g.padding
        if linear:
            axes = e.const(f"{name}_axes", np.array([2, 3], np.int64))
            op_input = e.node("Unsqueeze", [op_input, axes], f"{name}_as4d")
            x = x if fused_threshold else op_input  # fused: x only feeds `_binput`
        if e.target == "onnxruntime":
            from bnn_export.convert.onnx_ops import (
                DOMAIN,
                make_binary_conv2d_node,
                pack_conv_weights,
            )

            e.used_domains.add(DOMAIN)
            packed = e.const(f"{name}_wpacked", pack_conv_weights(bits4))
            affine = [(f"{name}_y" if linear else name, name, multiplier, bias)]
            if e.accumulators:
                affine.append(
                    (f"{name}_acc", f"{name}_acc", np.ones_like(multiplier), np.zeros_like(bias))
                )
            threshold = (
                [e.const(f"{name}_op_threshold", a.activation.threshold.astype(np.float32))]
                if fused_threshold and a.activation.threshold is not None
                else []
            )
            for out, prefix, mult, add in affine:
                inputs = [
                    op_input,
                    packed,
                    e.const(f"{prefix}_multiplier", mult),
                    e.const(f"{prefix}_bias", add.astype(np.float32)),
                    *threshold,
                ]
                e.nodes.append(
                    make_binary_conv2d_node(
                        inputs,
                        [out],
                        channels_in=in_shape[1],
                        kernel_shape=g.kernel,
                        strides=g.stride,
                        pads=[ph, pw, ph, pw],
                        dilations=g.dilation,
                        group=g.groups,
                        pad_value=int(a.pad_value),
                        name=out,
                    )
                )
            y = f"{name}_y" if linear else name
            if not linear:  # a residual Add after it may become the op's `residual` input
                tail = consumers[0].name if consumers and consumers[0].name in e.folded else name
                e.fusable[tail] = e.nodes[-1 - (len(affine) - 1)]
        else:
            y = self._onnx_sign_conv(node, e, op_input, bits4, multiplier, in_shape)
        if linear:
            return e.node("Flatten", [y], name, axis=1)
        return y

    def _onnx_sign_conv(
        self,
        node: Node,
        e: OnnxEmitter,
        x: str,
        bits4: np.ndarray,
        multiplier: np.ndarray,
        in_shape: Shape,
    ) -> str:
        """openvino / reference: binarize (FakeQuantize or Where), pad, float Conv, Mul."""
        name, linear, pad_value = node.name, self.linear, int(self.attrs(node).pad_value)
        g = self.geometry(node)
        ph, pw = g.padding
        pads = [ph, pw, ph, pw]

        def pad_with(t: str, what: str, fill: np.ndarray | None = None) -> str:
            """``t`` padded by (ph, pw) with 1.0, or per channel with ``fill`` [C]."""
            nonlocal pads
            pads = [0, 0, 0, 0]
            widths = e.const(f"{name}_pads", np.array([0, 0, ph, pw, 0, 0, ph, pw], np.int64))
            if fill is None or (fill == fill[0]).all():
                value = np.float32(1 if fill is None else fill[0])
                val = e.const(f"{name}_padval", value)
                return e.node("Pad", [t, widths, val], f"{name}_{what}", mode="constant")
            # one value per channel: a select on the border (no arithmetic on t)
            _, _, h, w = in_shape
            border = np.ones((1, 1, h + 2 * ph, w + 2 * pw), bool)
            border[:, :, ph : ph + h, pw : pw + w] = False
            zero = e.const(f"{name}_padval", np.float32(0))
            padded = e.node("Pad", [t, widths, zero], f"{name}_{what}_zeros", mode="constant")
            mask = e.const(f"{name}_pad_border", border)
            fills = e.const(f"{name}_pad_fill", fill.astype(np.float32).reshape(1, -1, 1, 1))
            return e.node("Where", [mask, fills, padded], f"{name}_{what}")

        if e.target == "openvino" and self.openvino_binary(node, in_shape):
            # OpenVINO merges identical FakeQuantize chains (two binary layers binarizing
            # the same tensor the same way: ReActNet's doubled 1x1 convs after one RSign),
            # and a FakeQuantize with two consumers is not fused into BinaryConvolution;
            # the k-th such layer gets a wider range (openvino_sign_range,
            # openvino_threshold_range): the same midpoint (threshold), exactly, and a chain
            # of its own
            act = self.attrs(node).activation
            key = (
                e.input(node),
                act.kind,
                None if act.threshold is None else act.threshold.tobytes(),
            )
            k = e.binarized_uses.get(key, 0)
            e.binarized_uses[key] = k + 1
            # what a +1-padded layer pads its float input with, per channel: a value that
            # binarizes to +1 (the bit the layer pads with)
            fill: np.ndarray | None = None
            if act.kind == "threshold":
                assert act.threshold is not None
                lo_c, hi_c = openvino_threshold_range(act.threshold, k)
                fill = np.maximum(hi_c, np.float32(1))  # above the midpoint; 1.0 if t < 1
                if act.below is not None:
                    # +1 where x <= t: binarize +1 where x > t instead (midpoint t) and flip
                    # those input channels' weights, the same products: OpenVINO fuses a
                    # FakeQuantize into BinaryConvolution only with the usual output range.
                    # Their +1 pad is then -1: a value below the midpoint.
                    b_lo, b_hi = openvino_below_range(act.threshold, k)
                    lo_c, hi_c = np.where(act.below, b_lo, lo_c), np.where(act.below, b_hi, hi_c)
                    fill = np.where(act.below, lo_c, fill)
                    flip = np.where(act.below, -1, 1).astype(bits4.dtype)
                    bits4 = bits4 * flip.reshape(1, -1, *[1] * (bits4.ndim - 2))
                shape = (1, -1, 1, 1)
                lo, hi = (
                    e.const(f"{name}_fq_in_lo", lo_c.reshape(shape)),
                    e.const(f"{name}_fq_in_hi", hi_c.reshape(shape)),
                )
            else:
                lo_k, hi_k = openvino_sign_range(k)
                lo, hi = e.const(f"{name}_fq_in_lo", lo_k), e.const(f"{name}_fq_in_hi", hi_k)
            if pad_value == 1 and (ph or pw):
                # pad the float input (with values binarizing to +1) before FakeQuantize:
                # OpenVINO fuses FakeQuantize -> Conv into BinaryConvolution, but not
                # FakeQuantize -> Pad -> Conv (found by the fuzz suite's runtime-op check).
                # A threshold above 1 needs a larger value than 1.0 (found by a test: 1.0
                # binarized to -1 there)
                x = pad_with(x, "padded_input", fill)
            olo = e.const(f"{name}_fq_out_lo", np.float32(-1))
            ohi = e.const(f"{name}_fq_out_hi", np.float32(1))
            xb = e.node(
                "FakeQuantize",
                [x, lo, hi, olo, ohi],
                f"{name}_sign",
                domain=OPENVINO_DOMAIN,
                levels=2,
            )
        else:
            cond = e.node(
                "GreaterOrEqual", [x, e.const(f"{name}_zero", np.float32(0))], f"{name}_ge0"
            )
            one = e.const(f"{name}_one", np.float32(1))
            minus_one = e.const(f"{name}_minus_one", np.float32(-1))
            xb = e.node("Where", [cond, one, minus_one], f"{name}_sign")
        if pad_value == 1 and any(pads):
            xb = pad_with(xb, "padded")
        weight = e.const(f"{name}_w", bits4.astype(np.float32))
        conv = e.node(
            "Conv",
            [xb, weight],
            f"{name}_acc",
            kernel_shape=list(g.kernel),
            strides=list(g.stride),
            pads=pads,
            dilations=list(g.dilation),
            group=g.groups,
        )
        scale = e.const(f"{name}_scale", multiplier.reshape(1, -1, 1, 1))
        return e.node("Mul", [conv, scale], f"{name}_y" if linear else name)

    # ------------------------------------------------------------------ Keras

    def to_keras(self, node: Node, e: KerasEmitter) -> Any:
        a, name, in_shape = self.attrs(node), e.name(node), e.in_shape(node)
        layers, lq = e.keras.layers, e.lq
        w: WeightExport = a.weights
        kernel = (w.bits * w.scale.reshape(-1, *[1] * (w.bits.ndim - 1))).astype(np.float32)
        x = _keras_binarized_input(e, node, a.activation, e.input(node), len(in_shape), name)
        float_conv = self.lce_float_reason(node, in_shape) is not None
        if float_conv:
            e.fallbacks.append(node.label)
        if self.linear:
            x = layers.Reshape((1, 1, in_shape[1]), name=f"{name}_as_map")(x)
            if float_conv:
                x = _keras_exact_sign(e, x, name)
            conv = lq.layers.QuantConv2D(
                kernel.shape[0],
                1,
                input_quantizer=None if float_conv else "ste_sign",
                kernel_quantizer=None,
                use_bias=False,
                name=name,
            )
            y = conv(x)
            e.set_weights(conv, [hwio(kernel[:, :, None, None])])
            return layers.Reshape((kernel.shape[0],), name=f"{name}_flat")(y)
        tf = e.tf
        k, s, p, d = a.kernel, a.stride, a.padding, a.keras_dilation()
        pad_value = float(a.pad_value)
        common = dict(
            filters=kernel.shape[0],
            kernel_size=k,
            strides=s,
            dilation_rate=d,
            groups=a.groups,
            use_bias=False,
            kernel_quantizer=None,
            name=name,
        )
        pads = a.minimal_pads(in_shape)
        paddings = [[0, 0], list(pads[0]), list(pads[1]), [0, 0]]
        if float_conv:
            x = _keras_exact_sign(e, x, name)
            if any(p):
                x = layers.Lambda(
                    lambda t: tf.pad(t, paddings, constant_values=pad_value), name=f"{name}_pad"
                )(x)
            conv = lq.layers.QuantConv2D(input_quantizer=None, padding="valid", **common)
        elif not any(p) or lce_same(k, s, p, d, in_shape, pad_value):
            conv = lq.layers.QuantConv2D(
                input_quantizer="ste_sign",
                padding="same" if any(p) else "valid",
                pad_values=pad_value,
                **common,
            )
        else:  # pad value +1 (0 is a float fallback): pad the float input with +1.0 before the sign
            x = layers.Lambda(
                lambda t: tf.pad(t, paddings, constant_values=1.0), name=f"{name}_pad"
            )(x)
            conv = lq.layers.QuantConv2D(input_quantizer="ste_sign", padding="valid", **common)
        y = conv(x)
        e.set_weights(conv, [hwio(kernel)])
        return y


@register
class BinaryConv(BinaryOp):
    name = "bconv"
    attrs_type = BinaryConvAttrs
    pattern = "BinaryConv2d"
    modules = (BinaryConv2d,)
    linear = False

    def from_module(self, name: str, m: nn.Module) -> BinaryConvAttrs | None:
        assert isinstance(m, BinaryConv2d)
        if not m.is_binary:
            return None  # the float baseline: a "conv"
        return BinaryConvAttrs(**ConvGeometry.of(m), **_binary_fields(m))

    def out_shape(self, node: Node, inputs: list[Shape]) -> Shape:
        a = self.attrs(node)
        return (1, a.weights.bits.shape[0], *a.out_hw(inputs[0]))

    def check_keras(self, node: Node) -> None:
        check_keras_conv(node, self.attrs(node))


@register
class BinaryLinearOp(BinaryOp):
    name = "blinear"
    attrs_type = BinaryLinearAttrs
    pattern = "BinaryLinear"
    modules = (BinaryLinear,)
    linear = True

    def from_module(self, name: str, m: nn.Module) -> BinaryLinearAttrs | None:
        assert isinstance(m, BinaryLinear)
        return BinaryLinearAttrs(**_binary_fields(m)) if m.is_binary else None

    def out_shape(self, node: Node, inputs: list[Shape]) -> Shape:
        return linear_out_shape(node, inputs[0], self.attrs(node).weights.bits.shape)


# ---------------------------------------------------------------------- binarized input


def _onnx_binarized_input(
    e: OnnxEmitter, node: Node, act: ActivationExport, x: str, rank: int
) -> str:
    """Float preprocessing before binarization (threshold, centring, SE shift)."""
    name = node.name
    if act.kind == "sign":
        return x
    if act.kind == "threshold":
        assert act.threshold is not None
        shape = (1, -1, *[1] * (rank - 2))
        thr = act.threshold.astype(np.float32).reshape(shape)
        out = e.node("Sub", [x, e.const(f"{name}_threshold", thr)], f"{name}_thresholded")
        if act.below is None:
            return out
        # +1 where x <= t: the sign of t - x (exact: a negation)
        flip = np.where(act.below, -1.0, 1.0).astype(np.float32).reshape(shape)
        return e.node("Mul", [out, e.const(f"{name}_below", flip)], f"{name}_below_flipped")
    if act.kind == "center":
        mean = e.node("ReduceMean", [x], f"{name}_mean", axes=list(range(1, rank)), keepdims=1)
        return e.node("Sub", [x, mean], f"{name}_centered")
    if act.kind == "se":
        assert act.se_w1 is not None and act.se_w2 is not None
        pooled = e.node("GlobalAveragePool", [x], f"{name}_se_gap") if rank == 4 else x
        flat = e.node("Flatten", [pooled], f"{name}_se_flat", axis=1)
        w1 = e.const(f"{name}_se_w1", act.se_w1.T.copy())
        h = e.node("MatMul", [flat, w1], f"{name}_se_fc1")
        h = e.node("Relu", [h], f"{name}_se_relu")
        w2 = e.const(f"{name}_se_w2", act.se_w2.T.copy())
        h = e.node("MatMul", [h, w2], f"{name}_se_fc2")
        s = e.node("Sigmoid", [h], f"{name}_se_sigmoid")
        if rank == 4:
            axes = e.const(f"{name}_se_axes", np.array([2, 3], np.int64))
            s = e.node("Unsqueeze", [s, axes], f"{name}_se_shift")
        return e.node("Add", [x, s], f"{name}_se_added")
    raise BnnExportError(f"layer {node.label!r}: activation {act.kind!r} cannot be exported")


def _keras_binarized_input(
    e: KerasEmitter, node: Node, act: ActivationExport, x: Any, rank: int, name: str
) -> Any:
    tf, layers = e.tf, e.keras.layers
    if act.kind == "sign":
        return x
    if act.kind == "threshold":
        assert act.threshold is not None and act.below is None
        thr = act.threshold.astype(np.float32)
        return layers.Lambda(lambda t: t - thr, name=f"{name}_threshold")(x)
    if act.kind == "center":
        axes = [1, 2, 3] if rank == 4 else [1]
        return layers.Lambda(
            lambda t: t - tf.reduce_mean(t, axis=axes, keepdims=True), name=f"{name}_center"
        )(x)
    if act.kind == "se":
        assert act.se_w1 is not None and act.se_w2 is not None
        w1, w2 = act.se_w1.T.astype(np.float32), act.se_w2.T.astype(np.float32)

        def se(t: Any) -> Any:
            pooled = tf.reduce_mean(t, axis=[1, 2]) if rank == 4 else t
            s = tf.sigmoid(tf.matmul(tf.nn.relu(tf.matmul(pooled, w1)), w2))
            return t + (s[:, None, None, :] if rank == 4 else s)

        return layers.Lambda(se, name=f"{name}_se")(x)
    raise BnnExportError(f"layer {node.label!r}: activation {act.kind!r} has no TFLite export")


def _keras_exact_sign(e: KerasEmitter, x: Any, name: str) -> Any:
    """+1 where x >= 0, else -1, in a form LCE's converter leaves alone (it rewrites
    ``where(x >= 0, 1, -1)`` into its quantize ops, and then the conv into LceBconv2d)."""
    tf = e.tf
    return e.keras.layers.Lambda(
        lambda t: tf.cast(t >= 0, tf.float32) * 2.0 - 1.0, name=f"{name}_sign"
    )(x)
