"""Larq (tf-keras) implementations of the registered binarizers.

Mirrors ``torch_impl``: each binarizer name maps to a weight quantizer (a larq
``Quantizer``: ``call(kernel)`` gives the effective kernel the convolution uses,
``export(kernel)`` gives bits and scale in PyTorch layout) and an activation quantizer
(``call(x)`` gives +-1, ``export()`` says how inference binarizes). Kernels are Keras
layout, (kh, kw, I, O) for convs and (I, O) for dense layers; per-output-channel
statistics reduce over every axis but the last. Layers, the trainer and the model
builders use only this interface (``set_schedule``, ``no_weight_decay``,
``no_weight_decay_parameters``, ``bind_latent``), never names.

Every class is registered as a Keras custom object (and under a ``bnn_export>`` alias)
so models serialize with ``get_config``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
from larq import quantizers as lq_quantizers
from larq import utils as lq_utils

from bnn_export.binarizers import BinarizerConfig, ede_schedule, siman_percent
from bnn_export.binarizers import get as get_binarizer
from bnn_export.binarizers import larq_math as lm
from bnn_export.binarizers.exports import ActivationExport, WeightExport
from bnn_export.errors import BnnExportError


def register(cls: type) -> type:
    """Register a quantizer class with Keras (by class name and a package alias)."""
    lq_utils.register_keras_custom_object(cls)
    lq_utils.register_alias(f"bnn_export>{cls.__name__}")(cls)
    return cls


def to_torch_layout(a: np.ndarray) -> np.ndarray:
    """(kh, kw, I, O) -> (O, I, kh, kw); (I, O) -> (O, I)."""
    if a.ndim == 4:
        return np.ascontiguousarray(a.transpose(3, 2, 0, 1))
    if a.ndim == 2:
        return np.ascontiguousarray(a.T)
    raise BnnExportError(f"expected a conv (4-d) or dense (2-d) kernel, got shape {a.shape}")


def from_torch_layout(a: np.ndarray) -> np.ndarray:
    """(O, I, kh, kw) -> (kh, kw, I, O); (O, I) -> (I, O)."""
    if a.ndim == 4:
        return np.ascontiguousarray(a.transpose(2, 3, 1, 0))
    if a.ndim == 2:
        return np.ascontiguousarray(a.T)
    raise BnnExportError(f"expected a conv (4-d) or dense (2-d) weight, got shape {a.shape}")


def channel_axes(rank: int) -> list[int]:
    """Axes a per-output-channel statistic reduces over: all but the last."""
    return list(range(rank - 1))


def _np(x: Any) -> np.ndarray:
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float32)


class _ConfiguredQuantizer(lq_quantizers.Quantizer):
    """A larq quantizer carrying a ``BinarizerConfig`` (serialized as a dict)."""

    def __init__(self, binarizer: BinarizerConfig | dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config_ = get_binarizer(binarizer)

    @property
    def params(self) -> dict[str, Any]:
        return self.config_.params

    def set_schedule(self, epoch: int, epochs: int) -> None:
        """Called by the trainer at the start of every epoch (0-based)."""

    #: Which axis of a ``torch_params`` entry indexes input channels (for weight transfer
    #: into a layer whose input features are reordered, e.g. after a Flatten).
    input_channel_axis: dict[str, int] = {}

    def torch_params(self) -> dict[str, tf.Variable]:
        """Variables by their PyTorch parameter name (for weight transfer)."""
        return {}

    def on_weights_loaded(self, kernel: np.ndarray) -> None:
        """Called after PyTorch weights were loaded into the layer (kernel: Keras layout)."""

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "binarizer": self.config_.to_dict()}


class WeightQuantizer(_ConfiguredQuantizer):
    """Base class: ``call(kernel)`` -> effective kernel; ``export(kernel)``."""

    precision = 1
    #: The trainer applies no weight decay to kernels quantized by this (SiMaN's rule).
    no_weight_decay: bool = False

    def no_weight_decay_parameters(self) -> list[tf.Variable]:
        """The quantizer's own variables the trainer keeps out of weight decay (SiMaN's
        alpha); the latent kernel itself is governed by ``no_weight_decay``."""
        return []

    def bind_latent(self, variable: tf.Variable) -> None:
        """Told the layer's latent kernel variable when the model is built, for a
        quantizer whose training forward updates it (SiMaN's clipping)."""

    def export(self, kernel: Any) -> WeightExport:
        raise NotImplementedError

    def score(self, kernel: Any) -> np.ndarray:
        """The value whose order decides the bits (+1 for the larger values), in PyTorch
        layout: what optimal-transport bit-ratio fixing sorts. Default: the kernel."""
        return to_torch_layout(np.asarray(self._score(tf.constant(_np(kernel)))))

    def _score(self, kernel: tf.Tensor) -> tf.Tensor:
        return kernel

    def _bits_export(self, bits: Any, scale: Any | None = None) -> WeightExport:
        b = to_torch_layout(_np(bits)).astype(np.int8)
        out = b.shape[0]
        s = np.ones(out, np.float32) if scale is None else _np(scale).reshape(-1)
        return WeightExport(b, np.broadcast_to(s, (out,)).astype(np.float32).copy())


class ActivationQuantizer(_ConfiguredQuantizer):
    """Base class: ``preprocess`` (what reads more than one element: SiMaN's per-sample
    centring, SD-BNN's SE shift; identity by default), then ``binarize`` (elementwise,
    and maps +1 to +1). ``call(x, stage=...)`` runs both, or one of them, so a strided
    conv can pad between them (``larq_layers.TorchPadQuantConv2D``): padding the
    preprocessed map with +1 equals padding the binarized one with +1."""

    precision = 1

    def call(self, x: tf.Tensor, stage: str = "all") -> tf.Tensor:
        if stage not in ("all", "preprocess", "binarize"):
            raise ValueError(f"stage must be all, preprocess or binarize, got {stage!r}")
        if stage != "binarize":
            x = self.preprocess(x)
        return x if stage == "preprocess" else self.binarize(x)

    def preprocess(self, x: tf.Tensor) -> tf.Tensor:
        return x

    def binarize(self, x: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def export(self) -> ActivationExport:
        return ActivationExport("sign")


# --- none: the float baseline ------------------------------------------------------


@register
class FloatWeight(WeightQuantizer):
    """The float baseline: the kernel is used as is."""

    precision = 32

    def call(self, kernel: tf.Tensor) -> tf.Tensor:
        return kernel

    def export(self, kernel: Any) -> WeightExport:
        raise TypeError("a float layer (binarizer 'none') has no binary export")


@register
class HardTanh(ActivationQuantizer):
    """The float baseline's activation: clip to [-1, 1]."""

    precision = 32

    def binarize(self, x: tf.Tensor) -> tf.Tensor:
        return tf.clip_by_value(x, -1.0, 1.0)

    def export(self) -> ActivationExport:
        raise TypeError("a float layer (binarizer 'none') has no binary export")


# --- ste -----------------------------------------------------------------------------


@register
class SteSignWeight(WeightQuantizer):
    """b = sign(w); gradient passed where |w| <= 1. Exports bits only (scale 1)."""

    def call(self, kernel: tf.Tensor) -> tf.Tensor:
        return lm.ste_sign(kernel)

    def export(self, kernel: Any) -> WeightExport:
        return self._bits_export(lm.sign(tf.convert_to_tensor(_np(kernel))))


@register
class SteSignActivation(ActivationQuantizer):
    """a_b = sign(a); gradient passed where |a| <= 1."""

    def binarize(self, x: tf.Tensor) -> tf.Tensor:
        return lm.ste_sign(x)


# --- shared pieces -------------------------------------------------------------------


def _scalar(name: str, value: float, layer: tf.keras.layers.Layer) -> tf.Variable:
    return layer.add_weight(
        name=name,
        shape=(),
        initializer=tf.keras.initializers.Constant(value),
        trainable=False,
    )


class _EdeMixin:
    """EDE's t and k as non-trainable variables (saved with the model, set per epoch);
    PyTorch names ``ede_t`` / ``ede_k``."""

    params: dict[str, Any]
    ede_t: tf.Variable
    ede_k: tf.Variable

    def _build_ede(self) -> None:
        t, k = ede_schedule(0, 1, self.params["t_min"], self.params["t_max"])
        self.ede_t = _scalar("ede_t", t, self)  # type: ignore[arg-type]
        self.ede_k = _scalar("ede_k", k, self)  # type: ignore[arg-type]

    def set_schedule(self, epoch: int, epochs: int) -> None:
        t, k = ede_schedule(epoch, epochs, self.params["t_min"], self.params["t_max"])
        self.ede_t.assign(t)
        self.ede_k.assign(k)

    def _ede_params(self) -> dict[str, tf.Variable]:
        return {"ede_t": self.ede_t, "ede_k": self.ede_k}

    def ede_sign(self, x: tf.Tensor) -> tf.Tensor:
        return lm.ede_sign(x, self.ede_t, self.ede_k)


# --- irnet ---------------------------------------------------------------------------


@register
class IrNetWeight(_EdeMixin, WeightQuantizer):
    """IR-Net Libra-PB: w_hat = (w - mean_o)/std_o (std over n - 1, as the official
    code); b = sign(w_hat) * s_o with
    s_o = 2^round(log2(mean_o |w_hat|)) (no gradient). Backward: EDE
    k*t*(1 - tanh(t*w_hat)^2). Qin et al., CVPR 2020."""

    def build(self, input_shape: Any) -> None:
        self._build_ede()
        super().build(input_shape)

    def torch_params(self) -> dict[str, tf.Variable]:
        return self._ede_params()

    @staticmethod
    def scale(w_hat: tf.Tensor) -> tf.Tensor:
        axes = list(range(w_hat.shape.rank - 1))
        mean_abs = tf.maximum(tf.reduce_mean(tf.abs(tf.stop_gradient(w_hat)), axis=axes), 1e-12)
        two = tf.constant(2.0, mean_abs.dtype)  # a bare 2.0 is float32: fails in float64
        return tf.pow(two, tf.round(tf.math.log(mean_abs) / math.log(2.0)))

    def call(self, kernel: tf.Tensor) -> tf.Tensor:
        w_hat = lm.standardize_per_channel(kernel, unbiased=True)
        return self.ede_sign(w_hat) * self.scale(w_hat)

    def export(self, kernel: Any) -> WeightExport:
        w_hat = lm.standardize_per_channel(tf.constant(_np(kernel)), unbiased=True)
        return self._bits_export(lm.sign(w_hat), self.scale(w_hat))

    def _score(self, kernel: tf.Tensor) -> tf.Tensor:
        return lm.standardize_per_channel(kernel, unbiased=True)


@register
class EdeSignActivation(_EdeMixin, ActivationQuantizer):
    """sign(a) with IR-Net's EDE gradient."""

    def build(self, input_shape: Any) -> None:
        self._build_ede()
        super().build(input_shape)

    def torch_params(self) -> dict[str, tf.Variable]:
        return self._ede_params()

    def binarize(self, x: tf.Tensor) -> tf.Tensor:
        return self.ede_sign(x)


# --- siman ---------------------------------------------------------------------------


@register
class SimanWeight(WeightQuantizer):
    """SiMaN, as ``torch_impl.SimanWeight`` (Lin et al., TPAMI 2022).

    Clipping: with p = ``clip_percent`` (a non-trainable variable stepped by
    ``set_schedule``, PyTorch name ``clip_percent``) > 0, the latent kernel is centred
    per output channel and its magnitudes clamped to the layer's [p, 100 - p]
    percentiles (``larq_math.siman_clip``). A training forward assigns that to the
    latent kernel variable (told by ``bind_latent`` when the model is built, as the
    official code overwrites its weights), so the optimizer steps from the clipped
    kernel; inference, ``export`` and ``_score`` clip a copy. The forward uses the
    clipped value with the identity gradient to the kernel. p = 0 switches it off.

    Bits: X = |(w_c - mean_o)/sqrt(var_o + 1e-5)| (variance over n - 1) of the clipped
    kernel; the floor(n/2) largest X of each output channel get B = 1 (ties: earlier
    PyTorch position gets 0), the rest B = 0. Effective weight alpha_o * (2B - 1) (code
    ``pm1``) or alpha_o * B (``01``), identity STE on X: (X - stop(X) + code) * alpha.
    alpha_o is learnable; ``init_from_kernel`` sets it to mean_o |w| when the model is
    built (PyTorch does this lazily on the first forward). No weight decay on the latent
    kernel nor on alpha."""

    no_weight_decay = True
    _latent: tf.Variable | None = None

    def build(self, input_shape: Any) -> None:
        out = int(input_shape[-1])
        self.alpha = self.add_weight(name="alpha", shape=(out,), initializer="ones")
        self.alpha_initialized = self.add_weight(
            name="alpha_initialized", shape=(), initializer="zeros", trainable=False, dtype="bool"
        )
        self.clip_percent = _scalar("clip_percent", 0.0, self)
        super().build(input_shape)

    def set_schedule(self, epoch: int, epochs: int) -> None:
        self.clip_percent.assign(siman_percent(epoch, epochs, self.params["clip_percent"]))

    def no_weight_decay_parameters(self) -> list[tf.Variable]:
        return [self.alpha]

    def bind_latent(self, variable: tf.Variable) -> None:
        self._latent = variable

    def init_from_kernel(self, kernel: np.ndarray) -> None:
        axes = tuple(range(kernel.ndim - 1))
        self.alpha.assign(np.abs(kernel).mean(axis=axes))
        self.alpha_initialized.assign(True)

    def on_weights_loaded(self, kernel: np.ndarray) -> None:
        # a PyTorch layer that never ran forward has not initialized alpha yet
        if not bool(self.alpha_initialized.numpy()):
            self.init_from_kernel(kernel)

    def torch_params(self) -> dict[str, tf.Variable]:
        return {
            "alpha": self.alpha,
            "alpha_initialized": self.alpha_initialized,
            "clip_percent": self.clip_percent,
        }

    def clipped(self, kernel: tf.Tensor) -> tf.Tensor:
        """``siman_clip`` at the current p (the kernel itself when p = 0), with the
        identity gradient to ``kernel``."""
        percent = tf.convert_to_tensor(self.clip_percent)
        clipped = tf.cond(
            percent > 0.0,
            lambda: lm.siman_clip(kernel, percent),
            lambda: tf.stop_gradient(kernel),
        )
        return clipped + (kernel - tf.stop_gradient(kernel))

    @staticmethod
    def magnitude(kernel: tf.Tensor) -> tf.Tensor:
        """X = |standardized kernel| (variance over n - 1, plus 1e-5)."""
        return tf.abs(lm.standardize_per_channel(kernel, unbiased=True, eps=lm.SIMAN_EPS))

    def code_bits(self, kernel: tf.Tensor) -> tf.Tensor:
        """B in {0, 1}, Keras kernel shape (kernel already clipped)."""
        x = self.magnitude(tf.stop_gradient(kernel))
        rows = lm.torch_rows(x)
        n = int(rows.shape[1])
        b = tf.cast(lm.rank_along_rows(rows) >= n - n // 2, kernel.dtype)
        return lm.from_torch_rows(b, kernel.shape)

    def _persist(self, clipped: tf.Tensor, training: Any) -> None:
        """The official in-place update: the latent kernel becomes the clipped one."""
        if self._latent is None or training is None or training is False:
            return
        value = tf.stop_gradient(clipped)
        if training is True:
            self._latent.assign(value)
            return
        tf.cond(
            tf.cast(training, tf.bool),
            lambda: self._latent.assign(value).read_value(),  # type: ignore[union-attr]
            lambda: value,
        )

    def call(self, kernel: tf.Tensor, training: Any = None) -> tf.Tensor:
        wc = self.clipped(kernel)
        self._persist(wc, training)
        b = self.code_bits(wc)
        code = 2.0 * b - 1.0 if self.params["code"] == "pm1" else b
        x = self.magnitude(wc)
        return (x - tf.stop_gradient(x) + code) * self.alpha

    def export(self, kernel: Any) -> WeightExport:
        if self.params["code"] != "pm1":
            raise BnnExportError(
                "SiMaN with code '01' has {0,1} weights, which binary conv ops cannot express",
                hint="train with the default code 'pm1' to export",
            )
        bits = 2.0 * self.code_bits(self.clipped(tf.constant(_np(kernel)))) - 1.0
        return self._bits_export(bits, self.alpha)

    def _score(self, kernel: tf.Tensor) -> tf.Tensor:
        return self.magnitude(self.clipped(kernel))


@register
class CenteredSignActivation(ActivationQuantizer):
    """SiMaN's activation: sign(a - mean(a)) per sample (mean over all but the batch
    axis). Backward as the official code and ``torch_impl.CenteredSignActivation``:
    clamp(2 - 2|a1|, 0) on the per-sample standardized a1 = (a - mean)/sqrt(var + 1e-5),
    back through the standardization; ``preprocess`` (the centring) carries that
    estimator and ``binarize`` passes the gradient through, so the forward graph (what
    LCE converts) is only the centring and the sign. Exported as a float reduction
    before the binary op (``ActivationExport("center")``)."""

    def preprocess(self, x: tf.Tensor) -> tf.Tensor:
        return lm.siman_centre(x)

    def binarize(self, x: tf.Tensor) -> tf.Tensor:
        return lm.pass_through_sign(x)

    def export(self) -> ActivationExport:
        return ActivationExport("center")


# --- equal_bits ----------------------------------------------------------------------


@register
class EqualBitsWeight(WeightQuantizer):
    """Equal Bits: sort per output channel (or the whole layer); the top round(p*n)
    latent weights become +1, the rest -1 (or the middle ranks 0 with pruning). Fixed
    scale alpha = sqrt(2/fan_in); identity STE. Li, Pintea, van Gemert, AAAI 2022."""

    def bits(self, kernel: tf.Tensor) -> tf.Tensor:
        p = self.params
        rows = lm.torch_rows(kernel)
        if p["granularity"] == "layer":
            rows = tf.reshape(rows, [1, -1])
        b = lm.ot_bits(rows, p["bit_ratio"], p["prune_rate"])
        return lm.from_torch_rows(tf.reshape(b, [kernel.shape[-1], -1]), kernel.shape)

    @staticmethod
    def scale(shape: Any) -> float:
        fan_in = int(np.prod([int(d) for d in shape[:-1]]))
        return float(np.sqrt(2.0 / fan_in))

    def call(self, kernel: tf.Tensor) -> tf.Tensor:
        return (kernel - tf.stop_gradient(kernel) + self.bits(kernel)) * self.scale(kernel.shape)

    def export(self, kernel: Any) -> WeightExport:
        k = tf.constant(_np(kernel))
        return self._bits_export(self.bits(k), np.float32(self.scale(k.shape)))


# --- sdbnn ---------------------------------------------------------------------------


@register
class SdBnnWeight(_EdeMixin, WeightQuantizer):
    """SD-BNN WSD: w~ = w + sigmoid(alpha_o) * 0.01 * mean_o(w) (mean without gradient,
    alpha_o learnable, init 0); bits = sign(w~) with the EDE gradient; no scale.
    Xue et al. 2021, arXiv 2103.02394."""

    def build(self, input_shape: Any) -> None:
        self._build_ede()
        self.alpha = self.add_weight(
            name="alpha", shape=(int(input_shape[-1]),), initializer="zeros"
        )
        super().build(input_shape)

    def torch_params(self) -> dict[str, tf.Variable]:
        return {**self._ede_params(), "alpha": self.alpha}

    def shifted(self, kernel: tf.Tensor) -> tf.Tensor:
        axes = list(range(kernel.shape.rank - 1))
        mean = tf.reduce_mean(tf.stop_gradient(kernel), axis=axes)
        return kernel + tf.sigmoid(self.alpha) * 0.01 * mean

    def call(self, kernel: tf.Tensor) -> tf.Tensor:
        return self.ede_sign(self.shifted(kernel))

    def export(self, kernel: Any) -> WeightExport:
        return self._bits_export(lm.sign(self.shifted(tf.constant(_np(kernel)))))

    def _score(self, kernel: tf.Tensor) -> tf.Tensor:
        return self.shifted(kernel)


@register
class SdBnnActivation(_EdeMixin, ActivationQuantizer):
    """SD-BNN ASD: a~ = a + SE(a), SE(a) = sigmoid(W2 relu(W1 GAP(a))) (no biases,
    reduction 16), per sample and channel; or (``activation="static"``) a~ = a +
    sigmoid(beta_c). bits = sign(a~) with the EDE gradient. W1 [C/16, C] and W2
    [C, C/16] are kept in PyTorch Linear layout."""

    input_channel_axis = {"beta": 0, "se_fc1.weight": 1, "se_fc2.weight": 0}

    def build(self, input_shape: Any) -> None:
        self._build_ede()
        channels = int(input_shape[-1])
        self.static = self.params["activation"] == "static"
        if self.static:
            self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")
        else:
            hidden = max(1, channels // 16)
            self.se_fc1 = self.add_weight(
                name="se_fc1", shape=(hidden, channels), initializer=_torch_linear_init(channels)
            )
            self.se_fc2 = self.add_weight(
                name="se_fc2", shape=(channels, hidden), initializer=_torch_linear_init(hidden)
            )
        super().build(input_shape)

    def torch_params(self) -> dict[str, tf.Variable]:
        if self.static:
            return {**self._ede_params(), "beta": self.beta}
        return {**self._ede_params(), "se_fc1.weight": self.se_fc1, "se_fc2.weight": self.se_fc2}

    def shift(self, x: tf.Tensor) -> tf.Tensor:
        if self.static:
            return tf.sigmoid(self.beta)
        axes = list(range(1, x.shape.rank - 1))
        pooled = tf.reduce_mean(x, axis=axes) if axes else x
        hidden = tf.nn.relu(tf.matmul(pooled, self.se_fc1, transpose_b=True))
        se = tf.sigmoid(tf.matmul(hidden, self.se_fc2, transpose_b=True))
        return tf.reshape(se, [-1] + [1] * len(axes) + [x.shape[-1]])

    def preprocess(self, x: tf.Tensor) -> tf.Tensor:
        return x + self.shift(x)

    def binarize(self, x: tf.Tensor) -> tf.Tensor:
        return self.ede_sign(x)

    def export(self) -> ActivationExport:
        if self.static:
            return ActivationExport("threshold", threshold=-_np(tf.sigmoid(self.beta)))
        return ActivationExport("se", se_w1=_np(self.se_fc1), se_w2=_np(self.se_fc2))


def _torch_linear_init(fan_in: int) -> tf.keras.initializers.Initializer:
    """PyTorch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    limit = 1.0 / math.sqrt(fan_in)
    return tf.keras.initializers.RandomUniform(-limit, limit)


# --- gwt -----------------------------------------------------------------------------


@register
class GwtWeight(WeightQuantizer):
    """Group weight transformation, built from the paper's description (Shulman 2021,
    arXiv 2107.01400; its code and full text were not reachable): each output channel
    is a group, normalized (w_hat = (w - mean_o)/std_o) and mapped through
    tanh(beta * w_hat), exactly differentiable (no STE), with beta annealed
    geometrically from beta_min to beta_max over training. In inference mode
    (``training=False``, also when converting) the weight is the binary limit
    sign(w_hat); export reports the fraction still unsaturated
    (|tanh(beta_max * w_hat)| < 0.99)."""

    def build(self, input_shape: Any) -> None:
        self.beta = _scalar("beta", float(self.params["beta_min"]), self)
        super().build(input_shape)

    def torch_params(self) -> dict[str, tf.Variable]:
        return {"beta": self.beta}

    def set_schedule(self, epoch: int, epochs: int) -> None:
        lo, hi = self.params["beta_min"], self.params["beta_max"]
        frac = epoch / (epochs - 1) if epochs > 1 else 1.0
        self.beta.assign(lo * (hi / lo) ** frac)

    def call(self, kernel: tf.Tensor, training: Any = None) -> tf.Tensor:
        w_hat = lm.standardize_per_channel(kernel)
        if training is None or training is False:
            return lm.sign(w_hat)
        if training is True:
            return tf.tanh(self.beta * w_hat)
        return tf.cond(
            tf.cast(training, tf.bool), lambda: tf.tanh(self.beta * w_hat), lambda: lm.sign(w_hat)
        )

    def export(self, kernel: Any) -> WeightExport:
        w_hat = lm.standardize_per_channel(tf.constant(_np(kernel)))
        soft = tf.tanh(float(self.params["beta_max"]) * w_hat)
        unsaturated = float(tf.reduce_mean(tf.cast(tf.abs(soft) < 0.99, tf.float32)))
        exp = self._bits_export(lm.sign(w_hat))
        return WeightExport(exp.bits, exp.scale, {"unsaturated_fraction": unsaturated})

    def _score(self, kernel: tf.Tensor) -> tf.Tensor:
        return lm.standardize_per_channel(kernel)


WEIGHT_QUANTIZERS: dict[str, Callable[..., WeightQuantizer]] = {
    "none": FloatWeight,
    "ste": SteSignWeight,
    "irnet": IrNetWeight,
    "siman": SimanWeight,
    "equal_bits": EqualBitsWeight,
    "sdbnn": SdBnnWeight,
    "gwt": GwtWeight,
}
ACTIVATION_QUANTIZERS: dict[str, Callable[..., ActivationQuantizer]] = {
    "none": HardTanh,
    "ste": SteSignActivation,
    "irnet": EdeSignActivation,
    "siman": CenteredSignActivation,
    "equal_bits": SteSignActivation,
    "sdbnn": SdBnnActivation,
    "gwt": SteSignActivation,
}


def _missing(config: BinarizerConfig) -> BnnExportError:
    return BnnExportError(
        f"binarizer {config.name!r} has no Larq implementation yet; "
        f"available in larq: {', '.join(WEIGHT_QUANTIZERS)}",
        hint="train it with --framework torch",
    )


def weight_quantizer(config: BinarizerConfig, *, name: str | None = None) -> WeightQuantizer:
    if config.name not in WEIGHT_QUANTIZERS:
        raise _missing(config)
    return WEIGHT_QUANTIZERS[config.name](config, name=name)


def activation_quantizer(
    config: BinarizerConfig, *, name: str | None = None
) -> ActivationQuantizer:
    if config.name not in ACTIVATION_QUANTIZERS:
        raise _missing(config)
    return ACTIVATION_QUANTIZERS[config.name](config, name=name)
