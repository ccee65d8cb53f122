"""ONNX export parity: every zoo model x binarizer x target against the PyTorch model."""

from __future__ import annotations

from functools import cache

import numpy as np
import onnx
import pytest
import torch
from onnx.reference import ReferenceEvaluator

from bnn_export.binarizers import BinarizerConfig, get
from bnn_export.convert.graph import Graph, graph_from_torch
from bnn_export.convert.onnx_export import to_onnx
from bnn_export.convert.onnx_ops import BinaryConv2d
from bnn_export.datasets import load_dataset
from bnn_export.errors import BnnExportError
from bnn_export.models import arch_spec
from bnn_export.models.evaluation import recalibrate_batchnorm
from bnn_export.models.torch_build import build_torch_model
from bnn_export.runtime.runners import OnnxRuntimeRunner, OpenVinoRunner

CONFIGS = {
    "ste": get("ste"),
    "irnet": get("irnet"),
    "siman": get("siman"),
    "equal_bits": get("equal_bits", bit_ratio=0.4),
    "sdbnn-se": get("sdbnn"),
    "sdbnn-static": get("sdbnn", activation="static"),
    "gwt": get("gwt"),
}


@cache
def _digits(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = load_dataset("digits").adapted(shape)
    return d.x_train[:256], d.x_test, d.y_test


def _model(
    arch_name: str, config: BinarizerConfig, pad_value: float = 1.0
) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    """A random-weight model with realistic batch-norm statistics (re-estimated on digits)."""
    arch = arch_spec(arch_name, pad_value=pad_value)
    shape = tuple(arch["kwargs"]["input_shape"])
    model = build_torch_model(arch, config, seed=1)
    x_train, _, _ = _digits(shape)
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(x_train[:64]))  # lazy init (SiMaN alpha)
        for m in model.modules():  # random, non-trivial learned parameters
            if hasattr(m, "alpha") and isinstance(m.alpha, torch.nn.Parameter):
                m.alpha.uniform_(-2, 2)
            if hasattr(m, "beta") and isinstance(m.beta, torch.nn.Parameter):
                m.beta.uniform_(-2, 2)
    recalibrate_batchnorm(model, x_train)
    return model, shape  # type: ignore[return-value]


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean())


# ---------------------------------------------------------------- parity, CPU-independent
#
# Deep random-weight BNNs are chaotic: float layers round differently in torch, onnxruntime
# and OpenVINO, and differently again on another CPU (AVX-512 or AVX2 float kernels), so a
# value right at 0 can binarize to +1 here and -1 there and change everything downstream of
# it. An agreement floor on a few dozen images measures that chaos, not the export. Instead:
#
# 1. every binary layer's integer accumulator, computed by the target's own binary kernel,
#    must equal the exact integers of the tensor that layer binarized in the same run
#    (tests/fuzz_models.py ExactAccumulators): bit-exact on any CPU;
# 2. every binarized activation must have torch's sign, except where the exported value is
#    within float32 rounding of 0 (SIGN_RTOL of that sample's largest |value| in the layer;
#    the largest float reduction between two binary layers here is a channel mean over at
#    most 8192 values, whose float32 error is at most 8192 * 2**-24 = 5e-4 of the mean
#    magnitude). A sample is followed up to its first such rounding flip, and no further;
# 3. the logits of the samples whose every binarized activation has torch's sign must equal
#    torch's to float32 rounding of the last float layers (LOGIT_RTOL of the logit scale).
# Nothing here depends on how often this CPU's rounding happens to flip a sign.

SIGN_RTOL = 1e-3
LOGIT_RTOL = 1e-3


def _torch_forward(
    model: torch.nn.Module, graph: Graph, x: np.ndarray
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """torch's float32 logits, and per binary graph node the signs (+1 = True) its input
    quantizer gave, per sample ([N, -1])."""
    signs: dict[str, np.ndarray] = {}
    hooks = []
    for node in graph.binary_nodes():
        quantizer = model.get_submodule(node.label).input_quantizer

        def hook(_m: torch.nn.Module, _i: object, out: torch.Tensor, name: str = node.name):
            values = out.detach().numpy().reshape(len(out), -1)
            assert np.isin(values, (-1.0, 1.0)).all(), f"{name}: not a +-1 activation"
            signs[name] = values > 0

        hooks.append(quantizer.register_forward_hook(hook))
    try:
        model.eval()
        with torch.no_grad():
            logits = model(torch.from_numpy(x)).numpy()
    finally:
        for h in hooks:
            h.remove()
    return logits, signs


def _check_export(model: torch.nn.Module, graph: Graph, x: np.ndarray, target: str) -> int:
    """The export for ``target`` computes ``model`` (points 1-3 above); returns how many
    samples' logits were compared."""
    proto = to_onnx(graph, target=target, accumulators=True)
    data = proto.SerializeToString()
    runner = OpenVinoRunner(data) if target == "openvino" else OnnxRuntimeRunner(data)
    # the reference target's accumulator is a float Conv of the signs: checked via logits
    return _check_outputs(model, graph, x, proto, runner.outputs(x), target, target != "reference")


def _check_outputs(
    model: torch.nn.Module,
    graph: Graph,
    x: np.ndarray,
    proto: onnx.ModelProto,
    out: dict[str, np.ndarray],
    target: str,
    exact: bool = True,
) -> int:
    from tests.fuzz_models import ExactAccumulators  # it imports this module's CONFIGS

    ref, torch_signs = _torch_forward(model, graph, x)
    got = out[proto.graph.output[0].name]
    assert got.shape == ref.shape and np.isfinite(got).all(), target
    if exact:
        ExactAccumulators(model, graph).check(out, target)
    diverged = np.zeros(len(x), dtype=bool)
    for node in graph.binary_nodes():  # topological: a flip only moves later layers
        binput = out[f"{node.name}_binput"].reshape(len(x), -1)
        differ = ((binput >= 0) != torch_signs[node.name]) & ~diverged[:, None]
        margin = SIGN_RTOL * np.abs(binput).max(axis=1, keepdims=True)
        wrong = np.argwhere(differ & (np.abs(binput) > margin))
        if wrong.size:
            sample, i = wrong[0]
            raise AssertionError(
                f"{target}: layer {node.label!r}: {len(wrong)} activations binarize "
                f"unlike torch, far from 0: sample {sample} value {binput[sample, i]:.4g} "
                f"(rounding margin {margin[sample, 0]:.3g})"
            )
        diverged |= differ.any(axis=1)
    kept = ~diverged
    # a rounding flip needs a value within ~1e-7 relative of 0: only a chaotic model, or a
    # bug that the checks above let through, leaves fewer than half the samples unflipped
    assert kept.sum() >= len(x) / 2, f"{target}: {int(kept.sum())} of {len(x)} unflipped"
    tol = LOGIT_RTOL * max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(got[kept], ref[kept], rtol=0, atol=tol, err_msg=target)
    return int(kept.sum())


MATRIX = [(a, n) for a in ("digits", "resnet20") for n in CONFIGS] + [
    (a, n) for a in ("vgg-small", "resnet18") for n in ("ste", "equal_bits", "sdbnn-se", "siman")
]


@pytest.mark.parametrize("arch, name", MATRIX)
def test_onnxruntime_target_matches_pytorch(arch: str, name: str) -> None:
    model, shape = _model(arch, CONFIGS[name])
    _, x_test, _ = _digits(shape)
    x = x_test if arch in ("digits", "resnet20") else x_test[:64]
    graph = graph_from_torch(model, shape)
    proto = to_onnx(graph, target="onnxruntime")
    n_binary = sum(1 for n in proto.graph.node if n.op_type == "BinaryConv2d")
    assert n_binary == {"digits": 3, "resnet20": 18, "vgg-small": 5, "resnet18": 16}[arch]
    _check_export(model, graph, x, "onnxruntime")


@pytest.mark.parametrize("pad_value", [0.0, 1.0])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_all_targets_on_digits(name: str, pad_value: float) -> None:
    model, shape = _model("digits", CONFIGS[name], pad_value)
    _, x, _ = _digits(shape)
    graph = graph_from_torch(model, shape)
    for target in ("onnxruntime", "reference", "openvino"):
        _check_export(model, graph, x, target)
    runner = OpenVinoRunner(to_onnx(graph, target="openvino").SerializeToString())
    assert runner.info["runtime_ops"].get("BinaryConvolution", 0) >= 1


def test_reference_evaluator_runs_our_op() -> None:
    """The numpy reference of BinaryConv2d, plugged into onnx's ReferenceEvaluator."""
    model, shape = _model("digits", CONFIGS["irnet"])
    _, x, _ = _digits(shape)
    graph = graph_from_torch(model, shape)
    proto = to_onnx(graph, target="onnxruntime", accumulators=True)
    got = ReferenceEvaluator(proto, new_ops=[BinaryConv2d]).run(None, {"input": x[:40]})
    out = dict(zip((o.name for o in proto.graph.output), got, strict=True))
    _check_outputs(model, graph, x[:40], proto, out, "ReferenceEvaluator")


def test_metadata_and_checker() -> None:
    model, shape = _model("digits", CONFIGS["equal_bits"])
    proto = to_onnx(
        graph_from_torch(model, shape),
        target="onnxruntime",
        metadata={"binarizer": {"name": "equal_bits"}},
    )
    onnx.checker.check_model(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["bnn_export_target"] == "onnxruntime" and '"equal_bits"' in meta["binarizer"]


def test_unsupported_layer_is_named() -> None:
    model, shape = _model("digits", CONFIGS["ste"])
    model.pool1 = torch.nn.LPPool2d(2, 2)  # type: ignore[assignment]
    with pytest.raises(BnnExportError, match="layer 'pool1' of type LPPool2d cannot be exported"):
        graph_from_torch(model, shape)


def test_pruned_model_is_refused() -> None:
    model, shape = _model("digits", get("equal_bits", prune_rate=0.3))
    with pytest.raises(BnnExportError, match="pruned"):
        graph_from_torch(model, shape)
