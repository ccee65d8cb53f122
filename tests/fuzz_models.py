"""Random small architectures from the supported layer set, for export-parity fuzzing.

``model_specs()`` is a hypothesis strategy of ``ModelSpec``s (always shape-valid);
``build_model(spec)`` turns one into a torch ``nn.Module`` that ``graph_from_torch``
traces, with random weights, a lazily initialized binarizer and batch-norm statistics
estimated on random inputs, so every layer sees realistic values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from bnn_export.binarizers import BinarizerConfig
from bnn_export.convert.graph import Graph, Node
from bnn_export.convert.ops.pooling import pool_output_size
from bnn_export.geometry import conv_output_size
from bnn_export.models.blocks import RPReLU, RSign
from bnn_export.models.evaluation import recalibrate_batchnorm
from bnn_export.models.layers import BinaryConv2d, BinaryLinear
from tests.test_onnx_export import CONFIGS

#: every binarizer, SD-BNN with both activation modes (the export tests' configurations)
BINARIZERS: dict[str, BinarizerConfig] = CONFIGS


@dataclass(frozen=True)
class BlockSpec:
    """Binary conv (or a float conv: ``binary=False``) -> batch norm [-> + input]
    [-> pooling]."""

    out: int
    kernel: int
    stride: int
    dilation: int
    same: bool  # padding d*(k-1)//2, else none
    groups: int
    pad_value: float
    residual: bool
    pool: str  # a key of POOLS
    binary: bool = True
    # issue 13's ops (defaults: the block as before)
    rsign: bool = False  # an RSign before the binary conv (binarizers in PLAIN_SIGN)
    act: str = "none"  # after the batch norm: a key of ACTS
    scale: bool = False  # then y * per-channel buffer + per-channel offset (both signs)
    cat: bool = False  # then torch.cat([y, x], dim=1) (same resolution only)
    scale_mixed: bool = False  # the scale buffer negative on odd channels


@dataclass(frozen=True)
class ModelSpec:
    in_channels: int
    size: int
    stem: int  # channels of the float first conv
    blocks: tuple[BlockSpec, ...]
    head: str  # "gap": GAP + float linear; "blinear": flatten + binary linear + BN + float linear
    hidden: int
    binarizer: str
    seed: int
    stem_kernel: int = 3
    stem_stride: int = 1
    stem_padding: int = 1


def _out(h: int, k: int, s: int, p: int, d: int) -> int:
    return conv_output_size(h, k, s, p, p, d)


#: pooling after a block: (kernel, stride, padding, ceil_mode, count_include_pad)
POOLS: dict[str, tuple[int, int, int, bool, bool] | None] = {
    "none": None,
    "max": (2, 2, 0, False, True),
    "avg": (2, 2, 0, False, True),
    "max3p": (3, 2, 1, False, True),  # Bi-Real Net's / QuickNet's stem pooling
    "avg3p": (3, 2, 1, False, True),
    "avg3px": (3, 2, 1, False, False),  # count_include_pad=False
    "maxceil": (2, 2, 0, True, True),  # a last partial window on odd maps
    "avgceil": (3, 2, 1, True, False),
}
#: activations after a block's batch norm
ACTS = ("none", "prelu", "prelu-shared", "relu6", "rprelu")
#: binarizers whose activation is a plain sign: an RSign before their layers is fused
PLAIN_SIGN = ("equal_bits", "gwt", "irnet", "ste")


def _pool_out(h: int, pool: str) -> int:
    geometry = POOLS[pool]
    if geometry is None:
        return h
    k, s, p, ceil, _ = geometry
    return pool_output_size(h, k, s, p, ceil)


def _pool_module(pool: str) -> nn.Module:
    geometry = POOLS[pool]
    if geometry is None:
        return nn.Identity()
    k, s, p, ceil, include = geometry
    if pool.startswith("max"):
        return nn.MaxPool2d(k, s, p, ceil_mode=ceil)
    return nn.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=include)


@st.composite
def model_specs(draw: st.DrawFn) -> ModelSpec:
    in_channels = draw(st.sampled_from([1, 3]))
    size = draw(st.integers(5, 12))
    stem = draw(st.integers(1, 40))
    # the float stem: any kernel/stride/padding (a stride-2 padded float conv was exported
    # wrong to TFLite before 76fc01a, unseen while the stem was always 3x3/1/1)
    stem_kernel = draw(st.sampled_from([1, 3, 5]))
    stem_stride = draw(st.sampled_from([1, 2]))
    stem_padding = draw(st.integers(0, stem_kernel // 2))
    blocks = []
    channels, h = stem, _out(size, stem_kernel, stem_stride, stem_padding, 1)
    for _ in range(draw(st.integers(1, 3))):
        # keep the width in 1 of 4 blocks (residual adds need it), else any 1-70
        out = channels if draw(st.integers(0, 3)) == 0 else draw(st.integers(1, 70))
        kernel = draw(st.sampled_from([1, 3, 5]))
        dilation = draw(st.sampled_from([1, 2]))
        stride = draw(st.sampled_from([1, 2]))
        same = draw(st.booleans())
        pad = dilation * (kernel - 1) // 2 if same else 0
        if _out(h, kernel, stride, pad, dilation) < 1:
            kernel, dilation, pad = 1, 1, 0
        groups = draw(
            st.sampled_from([g for g in (1, 2, 3, 4) if channels % g == 0 and out % g == 0])
        )
        residual = stride == 1 and (same or kernel == 1) and out == channels and draw(st.booleans())
        binary = draw(st.integers(0, 5)) > 0  # 1 in 6 blocks: a float conv mid-network
        h = _out(h, kernel, stride, pad, dilation)
        pool = draw(st.sampled_from(list(POOLS))) if h >= 4 else "none"
        h = _pool_out(h, pool)
        pad_value = draw(st.sampled_from([0.0, 1.0]))
        rsign = binary and draw(st.booleans())
        act = draw(st.sampled_from(ACTS))
        scale = draw(st.integers(0, 3)) == 0
        scale_mixed = scale and draw(st.booleans())
        keeps_size = stride == 1 and (same or kernel == 1)
        cat = keeps_size and out + channels <= 96 and draw(st.integers(0, 3)) == 0
        blocks.append(
            BlockSpec(
                out,
                kernel,
                stride,
                dilation,
                same,
                groups,
                pad_value,
                residual,
                pool,
                binary,
                rsign,
                act,
                scale,
                cat,
                scale_mixed,
            )  # fmt: skip
        )
        channels = out + channels if cat else out
    return ModelSpec(
        in_channels=in_channels,
        size=size,
        stem=stem,
        blocks=tuple(blocks),
        head=draw(st.sampled_from(["gap", "blinear"])),
        hidden=draw(st.integers(1, 40)),
        binarizer=draw(st.sampled_from(sorted(BINARIZERS))),
        seed=draw(st.integers(0, 2**16)),
        stem_kernel=stem_kernel,
        stem_stride=stem_stride,
        stem_padding=stem_padding,
    )


class Block(nn.Module):
    def __init__(
        self, cin: int, b: BlockSpec, config: BinarizerConfig, plain_sign: bool = False
    ) -> None:
        super().__init__()
        self.rsign = RSign(cin) if b.rsign and b.binary and plain_sign else None
        if self.rsign is not None:
            with torch.no_grad():
                # beyond +-1 too: what pads a +1-padded layer must still binarize to +1
                self.rsign.threshold.uniform_(-1.5, 1.5)
        self.act: nn.Module = {
            "none": nn.Identity(),
            "prelu": nn.PReLU(b.out),
            "prelu-shared": nn.PReLU(),
            "relu6": nn.ReLU6(),
            "rprelu": RPReLU(b.out),
        }[b.act]
        if isinstance(self.act, nn.PReLU | RPReLU):
            with torch.no_grad():
                for prm in self.act.parameters():
                    prm.uniform_(-0.5, 0.5)
        self.use_scale, self.cat = b.scale, b.cat
        if b.scale:
            scale = torch.linspace(0.5, 1.5, b.out)
            if b.scale_mixed:  # a negative scale flips the sign of what a binary layer sees
                scale[1::2] *= -1
            self.register_buffer("scale", scale)
            # offsets of both signs, none near 0: a binary layer after a never-negative
            # activation (ReLU6, PReLU with a negative slope) still sees both signs, and a
            # zeroed input plus its offset is never a tie for the sign
            offsets = [(-1) ** i * 0.125 * (1 + i % 3) / 3 for i in range(b.out)]
            self.register_buffer("offset", torch.tensor(offsets).view(1, -1, 1, 1))
        pad = b.dilation * (b.kernel - 1) // 2 if b.same else 0
        self.conv: nn.Module
        if b.binary:
            self.conv = BinaryConv2d(
                cin,
                b.out,
                b.kernel,
                binarizer=config,
                stride=b.stride,
                padding=pad,
                dilation=b.dilation,
                groups=b.groups,
                pad_value=b.pad_value,
            )
        else:
            self.conv = nn.Conv2d(
                cin,
                b.out,
                b.kernel,
                stride=b.stride,
                padding=pad,
                dilation=b.dilation,
                groups=b.groups,
            )
        self.bn = nn.BatchNorm2d(b.out)
        self.residual = b.residual
        self.pool: nn.Module = _pool_module(b.pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x if self.rsign is None else self.rsign(x)))
        y = self.act(y)
        if self.use_scale:
            y = y * self.scale.view(1, -1, 1, 1) + self.offset
        if self.residual:
            y = y + x
        if self.cat:
            y = torch.cat([y, x], dim=1)
        return self.pool(y)


class FuzzNet(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        config = BINARIZERS[spec.binarizer]
        self.stem = nn.Conv2d(
            spec.in_channels,
            spec.stem,
            spec.stem_kernel,
            stride=spec.stem_stride,
            padding=spec.stem_padding,
        )
        self.stem_bn = nn.BatchNorm2d(spec.stem)
        blocks, channels = [], spec.stem
        h = _out(spec.size, spec.stem_kernel, spec.stem_stride, spec.stem_padding, 1)
        for b in spec.blocks:
            blocks.append(Block(channels, b, config, spec.binarizer in PLAIN_SIGN))
            pad = b.dilation * (b.kernel - 1) // 2 if b.same else 0
            h = _pool_out(_out(h, b.kernel, b.stride, pad, b.dilation), b.pool)
            channels = b.out + channels if b.cat else b.out
        self.blocks = nn.Sequential(*blocks)
        self.head: nn.Module
        if spec.head == "gap":
            self.head = nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10)
            )
        else:
            self.head = nn.Sequential(
                nn.Flatten(),
                BinaryLinear(channels * h * h, spec.hidden, binarizer=config),
                nn.BatchNorm1d(spec.hidden),
                nn.Linear(spec.hidden, 10),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem_bn(self.stem(x))))


def input_shape(spec: ModelSpec) -> tuple[int, int, int]:
    return (spec.in_channels, spec.size, spec.size)


def inputs(spec: ModelSpec, n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(spec.seed + seed)
    return rng.uniform(-1, 1, (n, *input_shape(spec))).astype(np.float32)


def build_model(spec: ModelSpec) -> nn.Module:
    """The spec as a torch model with random weights and estimated BN statistics (eval mode)."""
    torch.manual_seed(spec.seed)
    model = FuzzNet(spec)
    calib = inputs(spec, 64, seed=2)
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(calib))  # lazy init (SiMaN alpha)
        for m in model.modules():  # random, non-trivial learned parameters
            if hasattr(m, "alpha") and isinstance(m.alpha, nn.Parameter):
                m.alpha.uniform_(-2, 2)
            if hasattr(m, "beta") and isinstance(m.beta, nn.Parameter):
                m.beta.uniform_(-2, 2)
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    recalibrate_batchnorm(model, calib)
    with torch.no_grad():
        # A channel constant over the calibration inputs (e.g. a binary layer fed a tensor
        # that is never negative: ReLU6, PReLU with a negative slope, + 0.125) gets
        # running_var ~0, and its batch norm multiplies float32 rounding by 1/sqrt(eps)
        # ~ 316: the model is ill-conditioned (float32 torch vs float64 torch already
        # differ on every sample), which says nothing about the export. Such channels get
        # variance 1; their mean stays, so the constant channel is still exported.
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                assert m.running_var is not None
                m.running_var[m.running_var < 1e-4] = 1.0
    model.eval()
    return model


def reference(model: nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float32 logits, float64 logits) of the torch model."""
    with torch.no_grad():
        ref32 = model(torch.from_numpy(x)).numpy()
        ref64 = model.double()(torch.from_numpy(x).double()).numpy()
    model.float()
    return ref32, ref64


def stable_samples(ref32: np.ndarray, ref64: np.ndarray) -> int:
    """Samples whose float32 and float64 torch logits agree to ``check_parity``'s tolerance."""
    tol = 1e-3 * max(1.0, float(np.abs(ref64).max()))
    return int((np.abs(ref32 - ref64).max(axis=1) <= tol).sum())


def check_parity(got: np.ndarray, ref32: np.ndarray, ref64: np.ndarray, what: str) -> None:
    """Exported logits vs the torch model, per sample.

    Binary layers compute exactly; float layers round differently, and a rounding change
    can flip a sign right at 0 before a binary layer. The float64 model is the yardstick:
    samples where float32 and float64 torch already disagree are unstable and skipped;
    of the stable ones, all but max(1, 10%) must match to 1e-3 relative (a bug in a layer
    hits nearly every sample; a flip at ~1e-8 can still change one of 4 samples).
    """
    scale = max(1.0, float(np.abs(ref64).max()))
    tol = 1e-3 * scale
    assert got.shape == ref32.shape, f"{what}: output shape {got.shape} != {ref32.shape}"
    assert np.isfinite(got).all(), f"{what}: non-finite outputs"
    stable = np.abs(ref32 - ref64).max(axis=1) <= tol
    close = np.abs(got - ref32).max(axis=1) <= tol
    n_stable = int(stable.sum())
    assert n_stable >= len(got) // 2, f"{what}: only {n_stable} stable samples (model too chaotic)"
    n_close = int(close[stable].sum())
    worst = float(np.abs(got - ref32)[stable].max())
    assert n_stable - n_close <= max(1, n_stable // 10), (
        f"{what}: {n_close} of {n_stable} stable samples match (max |diff| {worst:.3g}, tol {tol:.3g})"
    )


class ExactAccumulators:
    """Bit-exact check of binary layers' integer accumulators (``to_onnx(accumulators=True)``
    outputs) against integers computed from the torch layers: sign(binput) (+1 at 0),
    padded with the layer's pad value, against the signs of the layer's binarized weights.

    float32 is exact here: every partial sum is an integer of magnitude <= (C/groups)*k*k,
    far below 2^24. The weight signs are checked once to be what torch's forward uses
    (bits * scale)."""

    def __init__(self, model: nn.Module, graph: Graph) -> None:
        self.graph = graph
        self.layers: dict[str, tuple[Node, nn.Module, torch.Tensor]] = {}
        for node in graph.binary_nodes():
            layer = model.get_submodule(node.label)
            export = layer.export_weights()
            bits = torch.from_numpy(export.bits.astype(np.float32))
            assert bits[0].numel() < 2**24
            scale = torch.from_numpy(export.scale).reshape(-1, *[1] * (bits.dim() - 1))
            with torch.no_grad():
                np.testing.assert_allclose(layer.quantized_weight(), bits * scale, rtol=1e-6)
            self.layers[node.name] = (node, layer, bits)

    def exact(self, name: str, binput: np.ndarray) -> np.ndarray:
        node, layer, bits = self.layers[name]
        a = torch.from_numpy(np.where(binput >= 0, 1.0, -1.0).astype(np.float32))
        if node.op == "blinear":
            return (a.reshape(len(a), -1) @ bits.T).numpy()
        ph, pw = layer.padding
        a = F.pad(a, (pw, pw, ph, ph), value=layer.pad_value)
        return F.conv2d(a, bits, None, layer.stride, 0, layer.dilation, layer.groups).numpy()

    def check(self, outputs: dict[str, np.ndarray], what: str) -> int:
        """Every binary layer's ``<node>_acc`` equals the exact integers of the tensor that
        layer binarized in the same run (``<node>_binput``); returns how many compared."""
        compared = 0
        for name, (node, _, _) in self.layers.items():
            exact = self.exact(name, outputs[f"{name}_binput"])
            got = outputs[f"{name}_acc"].reshape(exact.shape)
            if not np.array_equal(got, exact):
                bad = np.argwhere(got != exact)
                raise AssertionError(
                    f"{what}: layer {node.label!r}: {len(bad)} of {got.size} "
                    f"accumulators differ, first at {tuple(bad[0])}: "
                    f"{got[tuple(bad[0])]} != {exact[tuple(bad[0])]}"
                )
            compared += got.size
        return compared
