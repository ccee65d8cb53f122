"""Optimal-transport bit-ratio fixing (Equal Bits' sort), applied to any trained model
before export.

For a Bernoulli(p) target in one dimension, optimal transport is a sort: in each output
channel (or the whole layer) the round(p*n) entries with the largest binarizer score get
+1 and the rest -1. Ties go by position (a stable sort), so results are deterministic
and identical to the Equal Bits binarizer's training forward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from bnn_export.binarizers import check_bit_ratio, count_of_top
from bnn_export.binarizers.exports import WeightExport
from bnn_export.errors import BnnExportError

if TYPE_CHECKING:  # PyTorch only for the PyTorch entry points (the Larq route has none)
    from torch import nn

GRANULARITIES = ("channel", "layer")


def ot_sort_bits(scores: np.ndarray, p: float) -> np.ndarray:
    """Rows of scores -> int8 rows in {-1, +1} with exactly round(p*n) ones per row."""
    rows = np.asarray(scores).reshape(scores.shape[0], -1)
    n = rows.shape[1]
    order = np.argsort(rows, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(n)[None, :].repeat(len(rows), 0), axis=1)
    return np.where(ranks >= n - count_of_top(p, n), 1, -1).astype(np.int8).reshape(scores.shape)


@dataclass(frozen=True)
class LayerRatio:
    """What fixing achieved in one layer."""

    target: float
    granularity: str
    n: int  # weights per channel (or per layer)
    ones_expected: int  # per channel (or per layer)
    achieved_mean: float
    achieved_min: float
    achieved_max: float

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def fix_layer_bits(
    scores: np.ndarray, scale: np.ndarray, p: float, granularity: str, layer: str | None = None
) -> tuple[WeightExport, LayerRatio]:
    """Bits with exactly round(p*n) ones per channel (or per layer), and the check of it."""
    p = check_bit_ratio(p)
    if granularity not in GRANULARITIES:
        raise BnnExportError(
            f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}"
        )
    rows = (
        scores.reshape(scores.shape[0], -1) if granularity == "channel" else scores.reshape(1, -1)
    )
    check_ratio_meetable(p, rows.shape[1], granularity, layer)
    bits = ot_sort_bits(rows, p).reshape(scores.shape)
    export = WeightExport(bits, scale.astype(np.float32))
    ratio = verify_ratio(export, p, granularity)
    return export, ratio


def check_ratio_meetable(p: float, n: int, granularity: str, layer: str | None = None) -> None:
    """Refuse a ratio that gives a channel (or layer) of n weights all -1 or all +1 bits.

    round(p*n) = 0 (or = n) would make every weight of the row the same sign: the layer
    then ignores its input pattern entirely, which is never what a ratio was asked for.
    """
    if _unmeetable(p, n):
        raise BnnExportError(
            _unmeetable_message(p, n, granularity, layer),
            hint=f"use {_meetable_range(n)} (n = {n} weights per {granularity})"
            + (", or --ot-granularity layer" if granularity == "channel" else ""),
        )


def _unmeetable(p: float, n: int) -> bool:
    return count_of_top(p, n) in (0, n)


def _unmeetable_message(p: float, n: int, granularity: str, layer: str | None) -> str:
    ones = count_of_top(p, n)
    where = f" in layer {layer!r}" if layer else ""
    achievable = f" (achievable there: k/{n}, k = 1..{n - 1})" if layer and n > 1 else ""
    return (
        f"bit ratio {p} cannot be met{where}: round({p} * {n}) = {ones} of the {n} weights per "
        f"{granularity} would be +1, so every weight would be {'-1' if ones == 0 else '+1'}"
        + achievable
    )


def _meetable_range(n: int) -> str:
    """The ratios p that n weights meet: 1 <= round(p*n) <= n - 1."""
    if n < 2:
        return "no ratio at all (one weight is all -1 or all +1)"
    return f"a ratio with {0.5 / n:.4g} <= p < {1 - 0.5 / n:.6g}"


def check_model_ratio_meetable(model: nn.Module, p: float, granularity: str) -> None:
    """Refuse, before any training, a ratio that some binary layer of ``model`` cannot meet
    (what ``fix_bit_ratios`` and ``convert --bit-ratio`` would refuse afterwards).

    The error names the first such layer and its achievable ratios; the hint gives the
    range every layer meets (bounded by the layer with the fewest weights per row).
    """
    from bnn_export.models.layers import binary_layers

    p = check_bit_ratio(p)
    sizes = {
        name: int(
            np.prod(layer.weight.shape[1:] if granularity == "channel" else layer.weight.shape)
        )
        for name, layer in binary_layers(model)
    }
    for name, n in sizes.items():
        if _unmeetable(p, n):
            tight = min(sizes, key=lambda k: sizes[k])
            raise BnnExportError(
                _unmeetable_message(p, n, granularity, name),
                hint=f"use {_meetable_range(sizes[tight])}, which every layer meets (the "
                f"tightest is {tight!r}: n = {sizes[tight]} weights per {granularity})"
                + (", or --ot-granularity layer" if granularity == "channel" else ""),
            )


def verify_ratio(export: WeightExport, p: float, granularity: str) -> LayerRatio:
    """Check every channel (or the layer) holds exactly round(p*n) +1 weights."""
    flat = (
        export.bits.reshape(export.bits.shape[0], -1)
        if granularity == "channel"
        else (export.bits.reshape(1, -1))
    )
    n = flat.shape[1]
    expected = count_of_top(p, n)
    ones = (flat == 1).sum(axis=1)
    if not (ones == expected).all() or not np.isin(flat, (-1, 1)).all():
        raise BnnExportError(
            f"bit-ratio fixing failed: expected {expected} of {n} weights +1 per {granularity}, "
            f"found {ones.min()}..{ones.max()}"
        )
    per_channel = export.ratio_per_channel()
    return LayerRatio(
        target=p,
        granularity=granularity,
        n=n,
        ones_expected=expected,
        achieved_mean=float((export.bits == 1).mean()),
        achieved_min=float(per_channel.min()),
        achieved_max=float(per_channel.max()),
    )


@dataclass(frozen=True)
class FixableLayer:
    """One binary layer as bit-ratio fixing sees it, in any framework: its current
    export (bits in PyTorch layout, scale) and binarizer scores (PyTorch layout)."""

    name: str
    binary: bool
    export: Callable[[], WeightExport]
    score: Callable[[], np.ndarray]


def fix_layers(
    layers: Iterable[FixableLayer], p: float, granularity: str = "channel"
) -> dict[str, tuple[WeightExport, LayerRatio]]:
    """The OT-sorted bits (binarizer scale kept) and verified ratio of every layer, by
    name: what both the PyTorch and the Larq routes apply. Refuses float layers, pruned
    (ternary) layers and ratios a layer cannot meet; changes nothing itself."""
    out: dict[str, tuple[WeightExport, LayerRatio]] = {}
    for layer in layers:
        if not layer.binary:
            raise BnnExportError(
                f"layer {layer.name!r} is a float layer; bit ratios apply to binary layers"
            )
        original = layer.export()
        if original.ternary:
            raise BnnExportError(
                f"layer {layer.name!r} has pruned (zero) weights; bit-ratio fixing needs a model "
                "trained without --prune-rate"
            )
        out[layer.name] = fix_layer_bits(layer.score(), original.scale, p, granularity, layer.name)
    if not out:
        raise BnnExportError("the model has no binary layers to fix")
    return out


def fix_bit_ratios(
    model: nn.Module, p: float, granularity: str = "channel"
) -> dict[str, LayerRatio]:
    """Re-derive every binary layer's bits by OT sorting at ratio ``p``, in place.

    Each layer's weight quantizer is replaced by a frozen one holding the fixed bits and
    the binarizer's own scale, so the model (and any export of it) computes with them.
    Returns what was achieved per layer (verified).
    """
    from bnn_export.binarizers import torch_impl as bz
    from bnn_export.models.layers import binary_layers

    layers = dict(binary_layers(model))
    fixed = fix_layers(
        (
            FixableLayer(
                name,
                layer.is_binary,
                layer.export_weights,
                partial(_torch_score, layer),
            )
            for name, layer in layers.items()
        ),
        p,
        granularity,
    )
    for name, (bits, _) in fixed.items():
        layer = layers[name]
        layer.weight_quantizer = bz.FrozenWeight(tuple(layer.weight.shape), layer.binarizer, bits)
    return {name: ratio for name, (_, ratio) in fixed.items()}


def _torch_score(layer: Any) -> np.ndarray:
    return np.asarray(layer.weight_quantizer.score(layer.weight).detach().cpu().numpy())
