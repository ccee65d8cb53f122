"""Shared conv configurations and random data for the kernel tests."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from hypothesis import strategies as st

from bnn_export.convert import onnx_ops

ODD_CHANNELS = (1, 3, 31, 32, 33, 63, 64, 65, 100, 128)


@dataclass(frozen=True)
class Conv:
    n: int
    c: int
    o: int
    h: int
    w: int
    kh: int
    kw: int
    sh: int = 1
    sw: int = 1
    dh: int = 1
    dw: int = 1
    top: int = 0
    left: int = 0
    bottom: int = 0
    right: int = 0
    group: int = 1
    pad_value: int = 1

    def attrs(self) -> dict[str, object]:
        return {
            "channels_in": self.c,
            "kernel_shape": (self.kh, self.kw),
            "strides": (self.sh, self.sw),
            "pads": (self.top, self.left, self.bottom, self.right),
            "dilations": (self.dh, self.dw),
            "group": self.group,
            "pad_value": self.pad_value,
        }

    def valid(self) -> bool:
        return (
            self.h + self.top + self.bottom >= self.dh * (self.kh - 1) + 1
            and self.w + self.left + self.right >= self.dw * (self.kw - 1) + 1
        )

    def __str__(self) -> str:
        return ",".join(f"{k}={v}" for k, v in asdict(self).items())


EDGE_CASES = [
    Conv(1, 1, 1, 1, 1, 1, 1),
    Conv(1, 3, 5, 6, 7, 3, 3, top=1, left=1, bottom=1, right=1),
    Conv(2, 31, 7, 5, 9, 3, 3, top=1, left=1, bottom=1, right=1, pad_value=0),
    Conv(1, 33, 9, 8, 8, 3, 3, sh=2, sw=2, top=1, left=1, bottom=1, right=1),
    Conv(1, 65, 4, 9, 10, 3, 3, dh=2, dw=2, top=2, left=2, bottom=2, right=2, pad_value=0),
    Conv(3, 100, 6, 7, 5, 1, 1),
    Conv(1, 64, 12, 5, 5, 1, 1, sh=2, sw=2),
    Conv(1, 12, 6, 6, 6, 3, 3, top=1, left=1, bottom=1, right=1, group=3),
    Conv(2, 96, 8, 5, 6, 3, 3, top=1, left=1, bottom=1, right=1, group=2, pad_value=0),
    Conv(1, 66, 10, 7, 6, 2, 3, top=0, left=2, bottom=1, right=0, pad_value=0),
    Conv(1, 32, 3, 4, 4, 4, 1, top=3, left=0, bottom=0, right=2, sh=3),
    Conv(1, 128, 17, 3, 3, 3, 3, top=1, left=1, bottom=1, right=1),
    Conv(1, 256, 24, 9, 9, 3, 3, top=1, left=1, bottom=1, right=1, pad_value=1),
    Conv(1, 256, 24, 9, 9, 3, 3, top=1, left=1, bottom=1, right=1, pad_value=0),
    Conv(2, 200, 40, 4, 11, 5, 2, sh=2, dw=3, top=2, left=3, bottom=1, right=3, group=2),
]


@st.composite
def convs(draw: st.DrawFn) -> Conv:
    group = draw(st.sampled_from((1, 1, 1, 2, 3)))
    cg = draw(st.one_of(st.sampled_from(ODD_CHANNELS), st.integers(1, 140)))
    conv = Conv(
        n=draw(st.integers(1, 3)),
        c=cg * group,
        o=group * draw(st.integers(1, 12)),
        h=draw(st.integers(1, 11)),
        w=draw(st.integers(1, 11)),
        kh=draw(st.integers(1, 4)),
        kw=draw(st.integers(1, 4)),
        sh=draw(st.integers(1, 3)),
        sw=draw(st.integers(1, 3)),
        dh=draw(st.integers(1, 2)),
        dw=draw(st.integers(1, 2)),
        top=draw(st.integers(0, 2)),
        left=draw(st.integers(0, 2)),
        bottom=draw(st.integers(0, 2)),
        right=draw(st.integers(0, 2)),
        group=group,
        pad_value=draw(st.sampled_from((0, 1))),
    )
    if not conv.valid():
        conv = Conv(
            **{**asdict(conv), "h": conv.dh * (conv.kh - 1) + 1, "w": conv.dw * (conv.kw - 1) + 1}
        )
    return conv


def random_inputs(conv: Conv, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float input with exact zeros, -0.0 and NaN sprinkled in, +-1 weights, packed W."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((conv.n, conv.c, conv.h, conv.w)).astype(np.float32)
    specials = np.array([0.0, -0.0, np.nan, np.inf, -np.inf], dtype=np.float32)
    mask = rng.random(x.shape) < 0.1
    x[mask] = rng.choice(specials, size=int(mask.sum()))
    w_pm1 = rng.choice(
        np.array([-1, 1], dtype=np.int8), size=(conv.o, conv.c // conv.group, conv.kh, conv.kw)
    )
    return x, w_pm1, onnx_ops.pack_conv_weights(w_pm1)
