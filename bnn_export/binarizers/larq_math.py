"""Primitive maths of the Larq backend: sign functions with their pseudo-gradients.

Each function is pure (tensors in, tensors out) with a ``tf.custom_gradient``; the
quantizer classes in ``larq_impl`` only wire them to variables and schedules.
The forward sign is larq's ``sign(sign(x) + 0.1)`` (x >= 0 -> +1, never 0), the
pattern Larq Compute Engine's converter recognises in front of a binary conv.
"""

from __future__ import annotations

import math

import tensorflow as tf
from larq import math as lq_math

from bnn_export.binarizers import count_of_top


def sign(x: tf.Tensor) -> tf.Tensor:
    """+1 where x >= 0, else -1."""
    return lq_math.sign(x)


def ste_sign(x: tf.Tensor, clip_value: float = 1.0) -> tf.Tensor:
    """Forward sign(x); backward passes the gradient where |x| <= clip_value."""

    @tf.custom_gradient
    def _call(x: tf.Tensor) -> tuple[tf.Tensor, object]:
        def grad(dy: tf.Tensor) -> tf.Tensor:
            return tf.where(tf.abs(x) <= clip_value, dy, tf.zeros_like(dy))

        return sign(x), grad

    return _call(x)


def ede_sign(x: tf.Tensor, t: tf.Tensor, k: tf.Tensor) -> tf.Tensor:
    """IR-Net's Error Decay Estimator: forward sign(x), backward k*t*(1 - tanh(t*x)^2).

    ``t`` and ``k`` (scalars, from the per-epoch schedule) get no gradient.
    """

    @tf.custom_gradient
    def _call(x: tf.Tensor) -> tuple[tf.Tensor, object]:
        def grad(dy: tf.Tensor) -> tf.Tensor:
            return dy * k * t * (1.0 - tf.square(tf.tanh(t * x)))

        return sign(x), grad

    return _call(x)


def torch_rows(kernel: tf.Tensor) -> tf.Tensor:
    """Keras kernel (kh, kw, I, O) or (I, O) -> [O, n] rows in PyTorch's (I, kh, kw) order,
    so order-dependent steps (tie breaks in sorts) match the PyTorch backend exactly."""
    perm = [3, 2, 0, 1] if kernel.shape.rank == 4 else [1, 0]
    return tf.reshape(tf.transpose(kernel, perm), [int(kernel.shape[-1]), -1])


def from_torch_rows(rows: tf.Tensor, shape: tf.TensorShape) -> tf.Tensor:
    """Inverse of ``torch_rows`` for a kernel of Keras shape ``shape``."""
    if len(shape) == 4:
        kh, kw, i, o = shape
        return tf.transpose(tf.reshape(rows, [o, i, kh, kw]), [2, 3, 1, 0])
    return tf.transpose(rows)


def standardize_per_channel(
    kernel: tf.Tensor, *, unbiased: bool = False, eps: float = 0.0
) -> tf.Tensor:
    """(w - mean_o) / sd_o over each output channel (last axis), as
    ``torch_impl.standardize_per_channel``: variance over n - 1 (``unbiased``; n for a
    channel of one weight) or n; sd_o = sqrt(var_o + eps) with ``eps`` > 0, otherwise
    std_o floored at 1e-8."""
    axes = list(range(kernel.shape.rank - 1))
    n = math.prod(int(d) for d in kernel.shape[:-1])
    mean = tf.reduce_mean(kernel, axis=axes, keepdims=True)
    centred = kernel - mean
    var = tf.reduce_sum(tf.square(centred), axis=axes, keepdims=True) / float(
        n - 1 if unbiased and n > 1 else n
    )
    sd = tf.sqrt(var + eps) if eps > 0 else tf.maximum(tf.sqrt(var), 1e-8)
    return centred / sd


def percentile_linear(sorted_values: tf.Tensor, percent: tf.Tensor) -> tf.Tensor:
    """The ``percent``-th percentile (a scalar tensor, so a traced step follows the
    schedule) of an ascending 1-d tensor, numpy's linear interpolation; the same
    arithmetic as ``torch_impl.percentile_linear`` (position in float64, fraction in
    float32)."""
    n = int(sorted_values.shape[0])
    pos = tf.cast(percent, tf.float64) / 100.0 * float(n - 1)
    lo = tf.clip_by_value(tf.cast(tf.floor(pos), tf.int32), 0, n - 1)
    hi = tf.minimum(lo + 1, n - 1)
    frac = tf.cast(pos - tf.cast(lo, tf.float64), sorted_values.dtype)
    v_lo, v_hi = tf.gather(sorted_values, lo), tf.gather(sorted_values, hi)
    return v_lo + (v_hi - v_lo) * frac


def siman_clip(kernel: tf.Tensor, percent: tf.Tensor) -> tf.Tensor:
    """SiMaN's latent-weight update (no gradient): centre each output channel, clamp the
    magnitudes to the layer's [p, 100 - p] percentiles, keep the signs."""
    kernel = tf.stop_gradient(kernel)
    axes = list(range(kernel.shape.rank - 1))
    centred = kernel - tf.reduce_mean(kernel, axis=axes, keepdims=True)
    magnitude = tf.abs(centred)
    ordered = tf.sort(tf.reshape(magnitude, [-1]))
    low = percentile_linear(ordered, percent)
    high = percentile_linear(ordered, 100.0 - tf.cast(percent, tf.float64))
    return tf.minimum(tf.maximum(magnitude, low), high) * tf.sign(centred)


#: SiMaN's floor under the variances it divides by (official code: 1e-5).
SIMAN_EPS = 1e-5


def siman_centre(x: tf.Tensor) -> tf.Tensor:
    """Forward: x - mean(x) per sample (all axes but the batch one). Backward: SiMaN's
    activation estimator, for a following ``pass_through_sign``: with the per-sample
    standardization a1 = c / s, s = sqrt(var(c) + 1e-5) (variance over n - 1), the
    upstream gradient g is weighted by clamp(2 - 2|a1|, 0) and carried back through a1
    and the centring, mean and variance included (what autograd does with the PyTorch
    formulation). Kept apart from the sign so a strided conv can pad between them."""
    axes = list(range(1, x.shape.rank))
    n = math.prod(int(d) for d in x.shape[1:])
    ddof = 1 if n > 1 else 0

    @tf.custom_gradient
    def _call(x: tf.Tensor) -> tuple[tf.Tensor, object]:
        c = x - tf.reduce_mean(x, axis=axes, keepdims=True)

        def grad(dy: tf.Tensor) -> tf.Tensor:
            d = c - tf.reduce_mean(c, axis=axes, keepdims=True)
            var = tf.reduce_sum(tf.square(d), axis=axes, keepdims=True) / float(n - ddof)
            s = tf.sqrt(var + SIMAN_EPS)
            g1 = dy * tf.nn.relu(2.0 - 2.0 * tf.abs(c / s))
            dot = tf.reduce_sum(g1 * c, axis=axes, keepdims=True)
            dc = g1 / s - d * dot / (float(n - ddof) * s * s * s)
            return dc - tf.reduce_mean(dc, axis=axes, keepdims=True)

        return c, grad

    return _call(x)


def pass_through_sign(x: tf.Tensor) -> tf.Tensor:
    """Forward sign(x); backward the identity (the estimator lives in the stage before,
    e.g. ``siman_centre``)."""

    @tf.custom_gradient
    def _call(x: tf.Tensor) -> tuple[tf.Tensor, object]:
        def grad(dy: tf.Tensor) -> tf.Tensor:
            return dy

        return sign(x), grad

    return _call(x)


def rank_along_rows(rows: tf.Tensor) -> tf.Tensor:
    """Rank of each entry within its row (0 = smallest); ties broken by position."""
    order = tf.argsort(rows, axis=1, stable=True)
    return tf.argsort(order, axis=1, stable=True)


def ot_bits(rows: tf.Tensor, p: float, prune_rate: float = 0.0) -> tf.Tensor:
    """Optimal transport to a Bernoulli(p) prior (a sort): per row, the top round(p*n)
    entries -> +1, the rest -1; with ``prune_rate`` k > 0 the bottom floor((1-k)/2*n) -> -1,
    the top n - floor((1+k)/2*n) -> +1 and the middle ranks -> 0."""
    n = int(rows.shape[1])
    ranks = rank_along_rows(tf.stop_gradient(rows))
    one, zero = tf.ones_like(rows), tf.zeros_like(rows)
    if prune_rate > 0:
        low = int(math.floor((1 - prune_rate) / 2 * n))
        high = int(math.floor((1 + prune_rate) / 2 * n))
        return tf.where(ranks < low, -one, tf.where(ranks >= high, one, zero))
    return tf.where(ranks >= n - count_of_top(p, n), one, -one)
