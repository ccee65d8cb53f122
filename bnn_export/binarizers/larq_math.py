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


def standardize_per_channel(kernel: tf.Tensor) -> tf.Tensor:
    """(w - mean_o) / std_o over each output channel (last axis; population std >= 1e-8)."""
    axes = list(range(kernel.shape.rank - 1))
    mean = tf.reduce_mean(kernel, axis=axes, keepdims=True)
    std = tf.maximum(tf.math.reduce_std(kernel, axis=axes, keepdims=True), 1e-8)
    return (kernel - mean) / std


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
