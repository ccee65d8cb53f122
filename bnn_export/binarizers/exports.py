"""What a binarizer hands to converters: framework-neutral numpy terms."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class WeightExport:
    """Binary weights of one layer.

    ``bits``: int8 in {-1, +1} (or {-1, 0, +1} for ternary/pruned layers), same shape as
    the latent weight (PyTorch layout: [O, I/groups, kh, kw] or [O, I]).
    ``scale``: float32 [O], the per-output-channel factor the binary conv output is
    multiplied by (ones when the binarizer has none).
    ``notes``: extra facts for reports (e.g. unsaturated weights for gwt).
    """

    bits: np.ndarray
    scale: np.ndarray
    notes: dict[str, float] = field(default_factory=dict)

    @property
    def ternary(self) -> bool:
        return bool((self.bits == 0).any())

    def ratio_per_channel(self) -> np.ndarray:
        """Fraction of +1 weights in each output channel."""
        flat = self.bits.reshape(self.bits.shape[0], -1)
        return (flat == 1).mean(axis=1)


@dataclass(frozen=True)
class ActivationExport:
    """How the input of a binary layer is binarized at inference.

    kind:
      ``sign``       bit = +1 where x >= 0
      ``threshold``  bit = +1 where x >= threshold[c] (per input channel; where ``below[c]``
                     is set, +1 where x <= threshold[c]: only in OpenVINO exports, from a
                     negative per-channel scale folded into the threshold)
      ``center``     bit = +1 where x - mean_{c,h,w}(x) >= 0 (per sample, float reduction)
      ``se``         bit = +1 where x + SE(x) >= 0, SE(x) = sigmoid(W2 relu(W1 GAP(x)))
    """

    kind: str
    threshold: np.ndarray | None = None
    se_w1: np.ndarray | None = None  # [C/r, C]
    se_w2: np.ndarray | None = None  # [C, C/r]
    below: np.ndarray | None = None  # bool [C], ``threshold`` only
