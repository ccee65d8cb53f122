"""The ops of the literature's BNNs (issue 13, part 2) through every target: per op, small
models exported to ONNX (onnxruntime, openvino, reference) and TFLite (one LCE child for
all) against PyTorch; the three zoo architectures (Bi-Real Net-18, ReActNet-A, QuickNet)
with every binary layer a binary op and CPU-independent parity; and refusals that name
what they refuse, before anything is written."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from bnn_export.binarizers import get
from bnn_export.convert.graph import Graph, fold_affine_into_thresholds, graph_from_torch
from bnn_export.convert.onnx_export import openvino_float_layers, to_onnx
from bnn_export.convert.tflite_pipeline import LceServer
from bnn_export.datasets import load_dataset
from bnn_export.errors import BnnExportError
from bnn_export.models import arch_spec
from bnn_export.models.blocks import RPReLU, RSign
from bnn_export.models.evaluation import recalibrate_batchnorm
from bnn_export.models.layers import BinaryConv2d, BinaryLinear
from bnn_export.models.torch_build import build_torch_model
from bnn_export.runtime.runners import LceRunner, OnnxRuntimeRunner, OpenVinoRunner
from tests.fuzz_models import check_parity, reference
from tests.test_onnx_export import _check_export

STE = get("ste")


class Case(nn.Module):
    """``fn(self, x)`` as a model, with the submodules it uses; the output flattened to
    [N, F] (PyTorch's C, H, W order) so every runtime's output compares directly."""

    def __init__(self, fn: Callable[..., torch.Tensor], **modules: Any) -> None:
        super().__init__()
        self.fn = fn
        for name, m in modules.items():
            if isinstance(m, nn.Module):
                self.add_module(name, m)
            else:
                self.register_buffer(name, m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.fn(self, x), 1)  # the identity on [N, F]


def _param(*shape: int, seed: int = 0) -> nn.Parameter:
    g = torch.Generator().manual_seed(seed)
    return nn.Parameter(torch.rand(*shape, generator=g) * 2 - 0.5)


def _rsign(c: int, reach: float = 0.5) -> RSign:
    m = RSign(c)
    with torch.no_grad():
        m.threshold.copy_(torch.linspace(-reach, reach, c))
    return m


def _rprelu(c: int) -> RPReLU:
    m = RPReLU(c)
    with torch.no_grad():
        m.gamma.copy_(torch.linspace(-0.3, 0.3, c))
        m.zeta.copy_(torch.linspace(0.2, -0.2, c))
        m.prelu.weight.copy_(torch.linspace(-0.5, 0.8, c))
    return m


def _bn(c: int, gamma: tuple[float, float] = (0.5, 1.5)) -> nn.BatchNorm2d:
    """Batch norm (evaluation mode) with trained-looking statistics."""
    m = nn.BatchNorm2d(c)
    with torch.no_grad():
        m.weight.copy_(torch.linspace(*gamma, c))
        m.bias.copy_(torch.linspace(0.3, -0.3, c))
        m.running_mean.copy_(torch.linspace(-0.2, 0.2, c))
        m.running_var.copy_(torch.linspace(0.5, 2.0, c))
    return m.eval()


def _prelu(c: int) -> nn.PReLU:
    m = nn.PReLU(c)
    with torch.no_grad():
        m.weight.copy_(torch.linspace(-0.5, 0.8, c))
    return m


def _conv_with_a_zero_channel(cin: int, cout: int, zero: int) -> nn.Conv2d:
    """A 1x1 conv whose output channel ``zero`` is exactly 0 everywhere."""
    torch.manual_seed(cin + cout)
    m = nn.Conv2d(cin, cout, 1)
    with torch.no_grad():
        m.weight[zero].zero_()
        m.bias[zero] = 0.0
    return m


def _bconv(cin: int, cout: int, k: int = 3, **kw: Any) -> BinaryConv2d:
    torch.manual_seed(cin * 100 + cout)
    return BinaryConv2d(cin, cout, k, binarizer=STE, padding=k // 2, **kw)


def _act_affine_bconv(scale: torch.Tensor, shift: torch.Tensor, k: int) -> Case:
    """conv 8 -> 16, PReLU, x * scale + shift (per channel), a k x k binary conv."""
    return Case(
        lambda s, x: s.b(s.p(s.c(x)) * s.scale.view(1, -1, 1, 1) + s.shift.view(1, -1, 1, 1)),
        c=nn.Conv2d(8, 16, 1),
        p=_prelu(16),
        b=_bconv(16, 16, k),
        scale=scale,
        shift=shift,
    )


#: name -> (model, input shape (C, H, W)): each op of part 2, in its variants
CASES: dict[str, tuple[nn.Module, tuple[int, int, int]]] = {
    # pooling: max pads with -inf (the inputs are negative too), ceil_mode's extra window
    "maxpool-3-2-pad1": (Case(lambda s, x: s.p(x), p=nn.MaxPool2d(3, 2, padding=1)), (8, 8, 8)),
    "maxpool-3-2-pad1-odd": (Case(lambda s, x: s.p(x), p=nn.MaxPool2d(3, 2, 1)), (8, 7, 7)),
    "maxpool-ceil": (
        Case(lambda s, x: s.p(x), p=nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)),
        (4, 8, 8),
    ),
    "maxpool-2-ceil-odd": (Case(lambda s, x: s.p(x), p=nn.MaxPool2d(2, ceil_mode=True)), (4, 7, 7)),
    "avgpool-pad-include": (Case(lambda s, x: s.p(x), p=nn.AvgPool2d(3, 2, 1)), (4, 8, 8)),
    "avgpool-pad-exclude": (
        Case(lambda s, x: s.p(x), p=nn.AvgPool2d(3, 2, 1, count_include_pad=False)),
        (4, 8, 8),
    ),
    "avgpool-ceil-include": (
        Case(lambda s, x: s.p(x), p=nn.AvgPool2d(3, 2, 1, ceil_mode=True)),
        (4, 8, 8),
    ),
    "avgpool-ceil-exclude": (
        Case(lambda s, x: s.p(x), p=nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)),
        (4, 8, 8),
    ),
    "avgpool-2-ceil-odd": (Case(lambda s, x: s.p(x), p=nn.AvgPool2d(2, ceil_mode=True)), (4, 7, 7)),
    # activations
    "prelu-shared": (Case(lambda s, x: s.a(x), a=nn.PReLU(init=0.1)), (4, 5, 5)),
    "prelu-per-channel": (Case(lambda s, x: s.a(x), a=nn.PReLU(4, init=0.3)), (4, 5, 5)),
    "prelu-after-flatten": (
        Case(lambda s, x: s.a(torch.flatten(x, 1)), a=nn.PReLU(1, init=-0.2)),
        (2, 3, 3),
    ),
    "rprelu": (Case(lambda s, x: s.a(x), a=_rprelu(4)), (4, 5, 5)),
    "relu-functional": (Case(lambda s, x: F.relu(x) + torch.relu(x * 2) + x.relu()), (3, 4, 4)),
    "relu6-hardtanh-clamp": (
        Case(
            lambda s, x: s.r6(x * 8) + s.ht(x) + F.hardtanh(x, -0.2, 0.4) + x.clamp(-0.1, 0.7),
            r6=nn.ReLU6(),
            ht=nn.Hardtanh(-0.5, 0.25),
        ),
        (3, 4, 4),
    ),  # fmt: skip
    "dropout": (
        Case(lambda s, x: F.dropout(s.d(x), 0.3, training=s.training), d=nn.Dropout(0.5)),
        (3, 4, 4),
    ),
    "softmax-module": (
        Case(
            lambda s, x: s.sm(s.fc(torch.flatten(x, 1))), fc=nn.Linear(48, 10), sm=nn.Softmax(dim=1)
        ),
        (3, 4, 4),
    ),  # fmt: skip
    "softmax-functional": (Case(lambda s, x: F.softmax(x.mean((2, 3)), 1)), (6, 4, 4)),
    # structure
    "cat-channels": (
        Case(lambda s, x: torch.cat([x, s.c(x), x * 2], dim=1), c=nn.Conv2d(3, 5, 3, padding=1)),
        (3, 6, 6),
    ),
    "mean-spatial": (
        Case(lambda s, x: x.mean((2, 3)) + x.mean(dim=(-1, -2), keepdim=True).flatten(1)),
        (5, 4, 4),
    ),
    "adaptive-avgpool": (
        Case(lambda s, x: F.adaptive_avg_pool2d(x, 1) + s.g(x), g=nn.AdaptiveAvgPool2d(1)),
        (5, 4, 4),
    ),
    "view-reshape-flatten": (
        Case(
            lambda s, x: (
                s.fc(x.view(x.size(0), -1))
                + s.fc(x.reshape(-1, 27))
                + s.fc(x.flatten(1))
                + s.fc(torch.reshape(x, (x.shape[0], -1)))
            ),
            fc=nn.Linear(27, 4),
        ),
        (3, 3, 3),
    ),  # fmt: skip
    "const-arith": (
        Case(
            lambda s, x: (
                (x * s.scale.view(1, -1, 1, 1) + s.shift[None, :, None, None] - 0.25) / 3 * 2
                + (1 - x)
                + s.w.reshape(1, 3, 1, 1) * x
            ),
            scale=torch.linspace(0.5, 2.0, 3),
            shift=torch.linspace(-1, 1, 3),
            w=_param(3),
        ),
        (3, 4, 4),
    ),  # fmt: skip
    "const-arith-features": (
        Case(lambda s, x: torch.flatten(x, 1) * s.scale + 0.5, scale=torch.linspace(0.5, 2, 12)),
        (3, 2, 2),
    ),
    # float convs: depthwise (and with a channel multiplier), grouped
    "depthwise-conv": (
        Case(
            lambda s, x: s.dw2(s.dw(x)),
            dw=nn.Conv2d(6, 6, 3, padding=1, groups=6),
            dw2=nn.Conv2d(6, 12, 3, stride=2, padding=1, groups=6, bias=False),
        ),
        (6, 8, 8),
    ),  # fmt: skip
    "grouped-conv": (
        Case(lambda s, x: s.g(x), g=nn.Conv2d(6, 9, 3, padding=1, groups=3)),
        (6, 6, 6),
    ),
    # ReActNet's RSign, fused into the binary layers it feeds (a threshold, no node)
    "rsign-bconv": (
        Case(
            lambda s, x: s.b1(s.rs(x)) + s.b2(s.rs(x)),
            rs=_rsign(8),
            b1=_bconv(8, 8),
            b2=_bconv(8, 8, 1),
        ),
        (8, 6, 6),
    ),  # fmt: skip
    # an activation, a positive per-channel x * s + b, a 1x1 binary conv: OpenVINO fuses
    # all into the float conv's post-ops and binarized wrongly (fuzz suite, openvino
    # 2026.4); its export folds x * s + b into the threshold (fold_affine_into_thresholds)
    "act-affine-bconv": (
        _act_affine_bconv(torch.linspace(0.5, 1.5, 16), torch.linspace(-0.4, 0.4, 16), 1),
        (8, 5, 5),
    ),
    # the same with ReActNet's RPReLU (its own + zeta is that per-channel Add; fuzz suite)
    "act-rprelu-bconv": (
        Case(
            lambda s, x: s.b(s.a(s.c(x))), c=nn.Conv2d(8, 16, 1), a=_rprelu(16), b=_bconv(16, 16, 1)
        ),
        (8, 5, 5),
    ),  # fmt: skip
    # the same with a batch norm after the activation (XNOR-Net's BN before the sign),
    # gammas of both signs
    "act-bn-bconv": (
        Case(
            lambda s, x: s.b(s.n(F.relu6(s.c(x)))),
            c=nn.Conv2d(8, 16, 1),
            n=_bn(16, (-1.0, 1.5)),
            b=_bconv(16, 16, 1),
        ),
        (8, 5, 5),
    ),  # fmt: skip
    # the same with ReLU6 and scales of both signs: x <= t where s < 0 (a reversed range)
    "act-affine-mixed-bconv": (
        Case(
            lambda s, x: s.b((F.relu6(s.c(x)) - 0.5) * s.scale.view(1, -1, 1, 1)),
            c=nn.Conv2d(8, 16, 1),
            b=_bconv(16, 16, 1),
            scale=torch.linspace(-1.5, 1.0, 16),
        ),
        (8, 5, 5),
    ),  # fmt: skip
    # x * s alone (threshold 0 on both sides; a channel exactly 0): the reversed range
    # around 0 must not be denormals, which OpenVINO flushes (NaN outputs)
    "act-scale-zero-bconv": (
        Case(
            lambda s, x: s.b(s.p(s.c(x)) * s.scale.view(1, -1, 1, 1)),
            c=_conv_with_a_zero_channel(8, 16, 3),
            p=_prelu(16),
            b=_bconv(16, 16, 1),
            scale=torch.linspace(-1.5, 1.0, 16),
        ),
        (8, 5, 5),
    ),  # fmt: skip
    # thresholds above 1 (and below -1 where reversed) before a +1-padded 3x3 binary conv:
    # OpenVINO's export pads the float input with a value binarizing to +1 (1.0 binarized
    # to -1 there); reversed and plain channels need different values (a select)
    "act-affine-large-bconv3": (
        _act_affine_bconv(
            torch.tensor([0.1, -0.1, 0.2, -0.25] * 4), torch.tensor([-0.3, -0.2, 0.25, 0.3] * 4), 3
        ),
        (8, 5, 5),
    ),
    # the same with scales of one sign only: one pad value above every threshold
    "act-affine-large-positive-bconv3": (
        _act_affine_bconv(torch.linspace(0.1, 0.3, 16), torch.linspace(-0.4, 0.3, 16), 3),
        (8, 5, 5),
    ),
    # RSign thresholds beyond +-1 before a +1-padded 3x3 binary conv (no affine folding)
    "rsign-large-bconv3": (
        Case(
            lambda s, x: s.b(s.rs(s.p(x * 3))),
            p=_prelu(8),
            rs=_rsign(8, 2.0),
            b=_bconv(8, 8, 3),
        ),
        (8, 6, 6),
    ),  # fmt: skip
    # the same before a flatten and a binary dense layer: per-channel constants, per-feature
    # thresholds
    "act-affine-blinear": (
        Case(
            lambda s, x: s.bl(
                torch.flatten(
                    s.p(s.c(x)) * s.scale.view(1, -1, 1, 1) + s.shift.view(1, -1, 1, 1), 1
                )
            ),
            c=nn.Conv2d(3, 8, 1),
            p=_prelu(8),
            bl=BinaryLinear(32, 8, binarizer=STE),
            scale=torch.linspace(-1.0, 1.5, 8),
            shift=torch.linspace(-0.4, 0.4, 8),
        ),
        (3, 2, 2),
    ),  # fmt: skip
    "rsign-blinear": (
        Case(
            lambda s, x: s.bl(s.rs(torch.flatten(x, 1))),
            rs=_rsign(32),
            bl=BinaryLinear(32, 8, binarizer=STE),
        ),
        (2, 4, 4),
    ),  # fmt: skip
}


def _x(shape: tuple[int, int, int], n: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, *shape)).astype(np.float32)


def _torch(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _close(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert got.shape == ref.shape, f"{what}: {got.shape} != {ref.shape}"
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref).max()),
                               err_msg=what)  # fmt: skip


@pytest.fixture(scope="module")
def lce() -> Iterator[LceServer]:
    with LceServer() as server:
        yield server


@pytest.mark.parametrize("case", list(CASES))
def test_op_onnx_matches_pytorch(case: str) -> None:
    model, shape = CASES[case]
    x = _x(shape)
    ref = _torch(model, x)
    graph = graph_from_torch(model, shape)
    assert "rsign" not in {n.op for n in graph.nodes}
    for target in ("onnxruntime", "reference", "openvino"):
        data = to_onnx(graph, target=target).SerializeToString()
        runner = OpenVinoRunner(data) if target == "openvino" else OnnxRuntimeRunner(data)
        _close(runner.predict(x), ref, f"{case}: onnx/{target}")
        if target == "onnxruntime" and graph.binary_nodes():
            ops = [n.op_type for n in to_onnx(graph, target=target).graph.node]
            assert ops.count("BinaryConv2d") == len(graph.binary_nodes()), ops
        if target == "openvino":  # binary layers run as BinaryConvolution (reversed
            # thresholds were not fused: a float FakeQuantize + Convolution)
            want = len(graph.binary_nodes()) - len(openvino_float_layers(graph))
            assert runner.info["runtime_ops"].get("BinaryConvolution", 0) == want, case  # type: ignore[attr-defined]


def test_ops_tflite_match_pytorch(lce: LceServer) -> None:
    """Every case through one LCE child: LceBconv2d for every binary layer, outputs as
    PyTorch's."""
    failures = []
    for case, (model, shape) in CASES.items():
        x = _x(shape)
        ref = _torch(model, x)
        graph = graph_from_torch(model, shape)
        try:
            data, facts = lce.convert(graph)
            assert facts["binary_ops"] == facts["binary_layers"] == len(graph.binary_nodes()), facts
            _close(LceRunner(data).predict(x), ref, f"{case}: tflite")
        except (AssertionError, BnnExportError) as exc:
            failures.append(f"{case}: {exc}")
    assert not failures, "\n".join(failures)


def test_rsign_becomes_the_threshold_of_its_binary_layers() -> None:
    model, shape = CASES["rsign-bconv"]
    graph = graph_from_torch(model, shape)
    assert [n.op for n in graph.nodes] == ["input", "bconv", "bconv", "add", "flatten"]
    threshold = model.rs.threshold.detach().numpy()
    for n in graph.binary_nodes():
        assert n.inputs == ["x"]
        assert n.attrs.activation.kind == "threshold"
        np.testing.assert_array_equal(n.attrs.activation.threshold, threshold)


def test_affine_chains_fold_into_openvino_thresholds() -> None:
    """x * s + b (per channel) feeding only a binary layer becomes its threshold in the
    OpenVINO export's graph: x >= -b / s, or x <= -b / s where s < 0; a zero scale, or a
    chain whose output also feeds something else, stays as it is."""
    model, shape = CASES["act-affine-bconv"]
    graph = graph_from_torch(model, shape)
    assert [n.op for n in graph.nodes] == ["input", "conv", "prelu", "const_arith",
                                           "const_arith", "bconv", "flatten"]  # fmt: skip
    folded = fold_affine_into_thresholds(graph)
    assert [n.op for n in folded.nodes] == ["input", "conv", "prelu", "bconv", "flatten"]
    (b,) = folded.binary_nodes()
    assert b.inputs == [graph.nodes[2].name] and b.attrs.activation.kind == "threshold"
    scale, shift = model.scale.numpy(), model.shift.numpy()
    np.testing.assert_allclose(b.attrs.activation.threshold, -shift / scale, rtol=1e-6)
    # the same bits away from the thresholds
    v = np.random.default_rng(0).uniform(-2, 2, (1000, 16)).astype(np.float32)
    t = b.attrs.activation.threshold
    far = np.abs(v - t) > 1e-5
    assert np.array_equal(((v * scale + shift) >= 0)[far], (v >= t)[far])
    assert graph.nodes[3].op == "const_arith"  # the caller's graph is unchanged
    assert b.attrs.activation.below is None
    # (relu6(x) - 0.5) * s, s of both signs: x >= 0.5 where s > 0, x <= 0.5 where s < 0
    mixed, mshape = CASES["act-affine-mixed-bconv"]
    (b2,) = fold_affine_into_thresholds(graph_from_torch(mixed, mshape)).binary_nodes()
    np.testing.assert_array_equal(b2.attrs.activation.threshold, np.full(16, 0.5, np.float32))
    np.testing.assert_array_equal(b2.attrs.activation.below, mixed.scale.numpy() < 0)
    # through a flatten (kept): feature f of the dense layer reads channel f // (H * W)
    dense, dshape = CASES["act-affine-blinear"]
    g4 = graph_from_torch(dense, dshape)
    f4 = fold_affine_into_thresholds(g4)
    assert [n.op for n in f4.nodes] == ["input", "conv", "prelu", "flatten", "blinear", "flatten"]
    (b4,) = f4.binary_nodes()
    ch = np.arange(32) // 4
    s4, o4 = dense.scale.numpy()[ch], dense.shift.numpy()[ch]
    np.testing.assert_allclose(b4.attrs.activation.threshold, -o4 / s4, rtol=1e-6)
    np.testing.assert_array_equal(b4.attrs.activation.below, s4 < 0)
    # a zero scale makes the bit a constant: the chain stays
    zero = Case(lambda s, x: s.b(s.c(x) * s.scale.view(1, -1, 1, 1)), c=nn.Conv2d(8, 16, 1),
                b=_bconv(16, 16, 1), scale=torch.linspace(0, 1, 16))  # fmt: skip
    g0 = graph_from_torch(zero, (8, 5, 5))
    assert fold_affine_into_thresholds(g0) is g0
    # a second consumer of the chain's output keeps the chain
    two = Case(
        lambda s, x: (lambda y: torch.cat([s.b(y), y], 1))(s.c(x) * 2.0 + 0.5),
        c=nn.Conv2d(8, 16, 1), b=_bconv(16, 16),
    )  # fmt: skip
    g3 = graph_from_torch(two, (8, 5, 5))
    assert [n.op for n in fold_affine_into_thresholds(g3).nodes] == [n.op for n in g3.nodes]


# ------------------------------------------------------------------ the zoo architectures

ZOO = {"birealnet18": 16, "reactnet-a": 31, "quicknet": 16}
SHAPE = (1, 64, 64)


#: BNN_FULL_SIZE=1: the three architectures also at full size (3x224x224, width 1.0;
#: minutes per model), the shape the speed table runs
FULL_SIZE = os.environ.get("BNN_FULL_SIZE") == "1"
FULL_SHAPE = (3, 224, 224)


@cache
def _digits(shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    d = load_dataset("digits").adapted(shape)
    return d.x_train[:256], d.x_test[:48]


def _digits64() -> tuple[np.ndarray, np.ndarray]:
    return _digits(SHAPE)


@cache
def _zoo(
    name: str, shape: tuple[int, int, int] = SHAPE, width: float = 0.25
) -> tuple[nn.Module, Graph]:
    """Random weights, RSign thresholds and RPReLU terms; batch norm re-estimated on real
    digits images (resized to ``shape``), so every layer sees realistic values."""
    model = build_torch_model(arch_spec(name, input_shape=shape, width=width), STE, seed=3)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, RSign):
                m.threshold.uniform_(-0.3, 0.3, generator=g)
            if isinstance(m, RPReLU):
                m.gamma.uniform_(-0.3, 0.3, generator=g)
                m.zeta.uniform_(-0.3, 0.3, generator=g)
                m.prelu.weight.uniform_(-0.2, 0.6, generator=g)
    x_train, _ = _digits(shape)
    recalibrate_batchnorm(model, x_train[: 256 if shape == SHAPE else 64])
    model.eval()
    return model, graph_from_torch(model, shape)


@pytest.mark.skipif(not FULL_SIZE, reason="full-size zoo parity: set BNN_FULL_SIZE=1")
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_full_size_parity(name: str, lce: LceServer) -> None:
    """Full size (224x224, width 1.0): every binary layer a binary op in onnxruntime,
    OpenVINO and LCE; exact accumulators (onnxruntime, OpenVINO), logits as PyTorch's."""
    model, graph = _zoo(name, FULL_SHAPE, 1.0)
    x = _digits(FULL_SHAPE)[1][:8]
    assert len(graph.binary_nodes()) == ZOO[name]
    for target in ("onnxruntime", "openvino"):
        _check_export(model, graph, x, target)
    runner = OpenVinoRunner(to_onnx(graph, target="openvino").SerializeToString())
    binary = ZOO[name] - len(openvino_float_layers(graph))
    assert runner.info["runtime_ops"].get("BinaryConvolution", 0) == binary
    data, facts = lce.convert(graph)
    assert facts["binary_ops"] == facts["binary_layers"] == ZOO[name], facts
    ref32, ref64 = reference(model, x)
    check_parity(LceRunner(data).predict(x), ref32, ref64, f"{name}: tflite")


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_onnx_every_binary_layer_is_binary_and_matches(name: str) -> None:
    model, graph = _zoo(name)
    _, x = _digits64()
    assert len(graph.binary_nodes()) == ZOO[name]
    onnx_model = to_onnx(graph, target="onnxruntime")
    nodes = onnx_model.graph.node
    constants = {t.name for t in onnx_model.graph.initializer}
    ops = [n.op_type for n in nodes]
    assert ops.count("BinaryConv2d") == ZOO[name]
    bconvs = [n for n in nodes if n.op_type == "BinaryConv2d"]
    producers = {out: n.op_type for n in nodes for out in n.output}
    # the op binarizes what the float graph hands it: no float op is left before it
    assert {producers.get(n.input[0], "input") for n in bconvs} <= {
        "BinaryConv2d", "Add", "PRelu", "Relu", "Clip", "MaxPool", "AveragePool", "Concat",
        "BatchNormalization", "Conv", "Mul", "input",
    }, {producers.get(n.input[0]) for n in bconvs}  # fmt: skip
    assert "Sub" not in {producers.get(n.input[0]) for n in bconvs}
    if name == "reactnet-a":  # every RSign fused: its threshold is the op's own input
        assert all(n.attrs.activation.kind == "threshold" for n in graph.binary_nodes())
        assert all(len(n.input) >= 5 and n.input[4] for n in bconvs)
    # residual shortcuts onto a binary conv are its `residual` input (no separate Add)
    shortcuts = sum(
        1
        for n in graph.nodes
        if n.op == "add" and any(i in {b.name for b in graph.binary_nodes()} or
                                 graph.node(i).op == "bn" and graph.node(i).inputs[0] in
                                 {b.name for b in graph.binary_nodes()} for i in n.inputs)
    )  # fmt: skip
    assert sum(len(n.input) >= 6 and n.input[5] not in constants for n in bconvs) == shortcuts
    if name == "reactnet-a":  # every RPReLU fused: the ops' rprelu_* inputs (onnxruntime)
        assert "PRelu" not in ops and all(len(n.input) == 9 for n in bconvs)
    assert shortcuts > 0 or name == "quicknet"  # quicknet: ReLU between bconv and its add
    for target in ("onnxruntime", "openvino", "reference"):
        _check_export(model, graph, x, target)  # exact accumulators, signs, logits
    ov_nodes = to_onnx(graph, target="openvino").graph.node
    ov_producers = {out: n.op_type for n in ov_nodes for out in n.output}
    fq_inputs = {ov_producers.get(n.input[0]) for n in ov_nodes if n.op_type == "FakeQuantize"}
    assert "Sub" not in fq_inputs, fq_inputs  # RSign: FakeQuantize's per-channel range
    runner = OpenVinoRunner(to_onnx(graph, target="openvino").SerializeToString())
    binary = ZOO[name] - len(openvino_float_layers(graph))
    assert runner.info["runtime_ops"].get("BinaryConvolution", 0) == binary
    assert binary == ZOO[name]  # width 0.25: every layer's channels a multiple of 8


def test_zoo_tflite_every_binary_layer_is_lce_bconv_and_matches(lce: LceServer) -> None:
    """Each architecture: LceBconv2d for every binary layer, logits as PyTorch's
    (tests/fuzz_models.py check_parity: LCE exposes no accumulators, so samples that
    float32 and float64 PyTorch already disagree on are skipped, and a rounding flip at 0
    may move at most max(1, 10%) of the others)."""
    _, x = _digits64()
    for name in ZOO:
        model, graph = _zoo(name)
        data, facts = lce.convert(graph)
        assert facts["binary_ops"] == facts["binary_layers"] == ZOO[name], (name, facts)
        assert not facts["float_fallbacks"], facts
        if name == "reactnet-a":  # RSign thresholds moved into biases: the only Subs left
            # are RPReLU's own (x - gamma); before, one more per LceQuantize (52 in all)
            rprelus = sum(n.op == "rprelu" for n in graph.nodes)
            assert facts["ops"]["SUB"] == rprelus == facts["ops"]["LceQuantize"], facts
        ref32, ref64 = reference(model, x)
        check_parity(LceRunner(data).predict(x), ref32, ref64, f"{name}: tflite")


class _ShortcutBlock(nn.Module):
    """stem -> bn0 -> RSign -> BinaryConv2d -> bn1; output bn1 + f(bn0)."""

    def __init__(self, shortcut: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.rs, self.conv = RSign(8), BinaryConv2d(8, 8, 3, binarizer=STE, padding=1)
        self.bn1, self.shortcut = nn.BatchNorm2d(8), shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn0(self.stem(x))
        return self.bn1(self.conv(self.rs(y))) + self.shortcut(y)


@pytest.mark.parametrize(
    "shortcut, moves",
    [(nn.Identity(), True), (nn.AvgPool2d(1), True), (nn.ReLU(), False), (nn.MaxPool2d(1), False)],
)
def test_lce_threshold_shift_into_biases(shortcut: nn.Module, moves: bool) -> None:
    """LCE has no threshold input: the RSign threshold t moves into the producer's bias
    (bn0's beta - t) and back onto the shortcut (bn1's beta + t) where the shortcut can
    carry it, else it stays a float Sub. The rewritten graph computes the same logits
    (onnx reference target, standard ops) and the same binarized bits."""
    import copy

    from bnn_export.convert.keras_export import shift_thresholds_into_producers

    torch.manual_seed(0)
    model = _ShortcutBlock(shortcut)
    with torch.no_grad():
        model.rs.threshold.uniform_(-0.5, 0.5)
    x, _ = _digits((1, 8, 8))
    recalibrate_batchnorm(model, x)
    graph = graph_from_torch(model.eval(), (1, 8, 8))
    shifted = copy.deepcopy(graph)
    moved = shift_thresholds_into_producers(shifted)
    (conv,) = shifted.binary_nodes()
    assert moved == ([conv.name] if moves else [])
    assert conv.attrs.activation.kind == ("sign" if moves else "threshold")
    t = graph.binary_nodes()[0].attrs.activation.threshold
    bn0 = {n.name: n for n in shifted.nodes}[conv.inputs[0]]
    beta0 = {n.name: n for n in graph.nodes}[bn0.name].attrs.beta
    np.testing.assert_allclose(bn0.attrs.beta, beta0 - t if moves else beta0, rtol=0, atol=1e-6)

    def logits_and_bits(g: Graph) -> tuple[np.ndarray, np.ndarray]:
        proto = to_onnx(g, target="reference", accumulators=True).SerializeToString()
        runner = OnnxRuntimeRunner(proto)
        out = runner.outputs(x)
        return out[runner.session.get_outputs()[0].name], out[f"{conv.name}_binput"]

    want, want_in = logits_and_bits(graph)
    got, got_in = logits_and_bits(shifted)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.mean(np.sign(got_in) != np.sign(want_in)) < 1e-3  # float rounding at t only


# ------------------------------------------------------------------ refusals


class _Model(nn.Module):
    def __init__(self, fn: Callable[..., torch.Tensor], **modules: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.block = nn.Module()
        for k, m in modules.items():
            self.block.add_module(k, m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.block, x)


class _Inner(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x) * x


REFUSALS: dict[str, tuple[nn.Module, str]] = {
    "function-with-module-path": (
        nn.Sequential(nn.Conv2d(2, 4, 3), nn.Sequential(nn.Identity(), _Inner())),
        r"torch.sigmoid \(sigmoid\) in module '1.1' \(_Inner\) at .*test_export_ops.py.*"
        r"torch.sigmoid\(x\) \* x` cannot be exported",
    ),
    "module": (nn.Sequential(nn.Conv2d(2, 4, 3), nn.GELU()), "layer '1' of type GELU"),
    "rsign-into-float": (
        _Model(lambda b, x: b.c(b.rs(x)), rs=RSign(2), c=nn.Conv2d(2, 2, 1)),
        "RSign 'block.rs' feeds 'block.c' .*not a binary layer",
    ),
    "rsign-into-non-sign-binarizer": (
        _Model(
            lambda b, x: b.c(b.rs(x)), rs=RSign(2), c=BinaryConv2d(2, 2, 1, binarizer=get("siman"))
        ),
        "RSign 'block.rs' feeds binary layer 'block.c', whose binarizer's activation is 'center'",
    ),  # fmt: skip
    "rsign-output": (_Model(lambda b, x: b.rs(x), rs=RSign(2)), "RSign 'block.rs' is the model"),
    "cat-on-width": (
        _Model(lambda b, x: torch.cat([x, x], dim=3)),
        r"torch.cat in the model's forward at .* only concatenation on channels \(dim=1\)",
    ),
    "mean-over-channels": (
        _Model(lambda b, x: x.mean(1)),
        r"Tensor.mean .* only the mean over the spatial axes",
    ),
    "view-keeping-batch-1": (
        _Model(lambda b, x: x.view(1, -1)),
        r"Tensor.view .* only a reshape to \[N, 50\]",
    ),
    "mul-by-a-map": (
        _Model(lambda b, x: x * torch.ones(1, 1, 5, 5)),
        r"operator.mul .* only a scalar or a per-channel constant",
    ),
    "mul-of-two-tensors": (
        _Model(lambda b, x: x * x.mean((2, 3), keepdim=True)),
        r"operator.mul .* cannot be",
    ),
    "flatten-batch": (_Model(lambda b, x: torch.flatten(x)), "only flattening dims 1"),
    "softmax-spatial": (_Model(lambda b, x: F.softmax(x, dim=2)), "only over channels"),
    "dropout-training": (_Model(lambda b, x: F.dropout(x, 0.5, training=True)), "training mode"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_unsupported_ops_are_refused_by_name(case: str) -> None:
    model, message = REFUSALS[case]
    with pytest.raises(BnnExportError, match=message) as err:
        graph_from_torch(model, (2, 5, 5))
    if case in ("function-with-module-path", "module", "mul-of-two-tensors"):
        # an op outside the table: the supported list
        assert "torch.cat" in str(err.value.hint) and "PReLU" in str(err.value.hint)
