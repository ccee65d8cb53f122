"""ONNX export parity: every zoo model x binarizer x target against the PyTorch model."""

from __future__ import annotations

from functools import cache

import numpy as np
import onnx
import pytest
import torch
from onnx.reference import ReferenceEvaluator

from bnn_export.binarizers import BinarizerConfig, get
from bnn_export.convert.graph import graph_from_torch
from bnn_export.convert.onnx_export import to_onnx
from bnn_export.convert.onnx_ops import BinaryConv2d
from bnn_export.datasets import load_dataset
from bnn_export.errors import BnnExportError
from bnn_export.models import arch_spec
from bnn_export.models.evaluation import predict, recalibrate_batchnorm
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


MATRIX = [(a, n) for a in ("digits", "resnet20") for n in CONFIGS] + [
    (a, n) for a in ("vgg-small", "resnet18") for n in ("ste", "equal_bits", "sdbnn-se", "siman")
]


@pytest.mark.parametrize("arch, name", MATRIX)
def test_onnxruntime_target_matches_pytorch(arch: str, name: str) -> None:
    model, shape = _model(arch, CONFIGS[name])
    _, x_test, _ = _digits(shape)
    x = x_test if arch in ("digits", "resnet20") else x_test[:64]
    ref = predict(model, x)
    proto = to_onnx(graph_from_torch(model, shape), target="onnxruntime")
    n_binary = sum(1 for n in proto.graph.node if n.op_type == "BinaryConv2d")
    assert n_binary == {"digits": 3, "resnet20": 18, "vgg-small": 5, "resnet18": 16}[arch]
    got = OnnxRuntimeRunner(proto.SerializeToString()).predict(x)
    # Random-weight deep nets are numerically chaotic: a float-rounding sign flip deep
    # inside moves some outputs. The yardstick is the same model in float64: the export
    # must be no further from PyTorch float32 than float32 rounding itself moves it
    # (trained digits models must agree >= 99.5% outright).
    with torch.no_grad():
        ref64 = model.double()(torch.from_numpy(x).double()).numpy()
    model.float()
    floor = 0.995 if arch == "digits" else min(0.995, _agreement(ref, ref64) - 0.01)
    assert _agreement(got, ref) >= floor
    # Bit-exact binary layers; float layers differ in rounding order, which can flip a sign
    # right at 0 in a deep net and move a few logits: nearly all must still be equal.
    close = np.isclose(got, ref, atol=1e-3 * max(1.0, float(np.abs(ref).max())))
    assert close.mean() >= (1.0 if arch == "digits" else 0.9)


@pytest.mark.parametrize("pad_value", [0.0, 1.0])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_all_targets_on_digits(name: str, pad_value: float) -> None:
    model, shape = _model("digits", CONFIGS[name], pad_value)
    _, x, _ = _digits(shape)
    ref = predict(model, x)
    graph = graph_from_torch(model, shape)
    for target in ("onnxruntime", "reference", "openvino"):
        data = to_onnx(graph, target=target).SerializeToString()
        runner = OpenVinoRunner(data) if target == "openvino" else OnnxRuntimeRunner(data)
        got = runner.predict(x)
        assert _agreement(got, ref) >= 0.995, target
        np.testing.assert_allclose(got, ref, atol=1e-3, err_msg=target)
        if target == "openvino":
            assert runner.info["runtime_ops"].get("BinaryConvolution", 0) >= 1


def test_reference_evaluator_runs_our_op() -> None:
    """The numpy reference of BinaryConv2d, plugged into onnx's ReferenceEvaluator."""
    model, shape = _model("digits", CONFIGS["irnet"])
    _, x, _ = _digits(shape)
    proto = to_onnx(graph_from_torch(model, shape), target="onnxruntime")
    got = ReferenceEvaluator(proto, new_ops=[BinaryConv2d]).run(None, {"input": x[:20]})[0]
    np.testing.assert_allclose(got, predict(model, x[:20]), atol=1e-4)


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
