"""Primitive maths of the Larq backend: sign functions with their pseudo-gradients.

Each function is pure (tensors in, tensors out) with a ``tf.custom_gradient``; the
quantizer classes in ``larq_impl`` only wire them to variables and schedules.
The forward sign is larq's ``sign(sign(x) + 0.1)`` (x >= 0 -> +1, never 0), the
pattern Larq Compute Engine's converter recognises in front of a binary conv.
"""

from __future__ import annotations

import tensorflow as tf
from larq import math as lq_math


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
