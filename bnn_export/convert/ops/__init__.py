"""The op table of the export graph: every op defined once (``base.Op``), in ``OPS``.

Importing this package registers the ops of the modules below. A new op is one more
``@register`` class, in one of them or in a new module imported here.
"""

from bnn_export.convert.ops import activations, pooling, structure
from bnn_export.convert.ops.base import (
    OPS,
    NoAttrs,
    Op,
    OpAttrs,
    Shape,
    get_op,
    register,
    unregister,
)
from bnn_export.convert.ops.binary import BinaryConvAttrs, BinaryLinearAttrs
from bnn_export.convert.ops.float_layers import BatchNormAttrs, ConvAttrs, LinearAttrs
from bnn_export.convert.ops.pooling import PoolAttrs

__all__ = [
    "OPS",
    "BatchNormAttrs",
    "BinaryConvAttrs",
    "BinaryLinearAttrs",
    "ConvAttrs",
    "LinearAttrs",
    "NoAttrs",
    "Op",
    "OpAttrs",
    "PoolAttrs",
    "Shape",
    "activations",
    "get_op",
    "pooling",
    "register",
    "structure",
    "unregister",
]
