"""PyTorch -> TFLite (LCE) conversion: LceBconv2d counts, parity in LCE's interpreter,
bit-packed size, refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bnn_export.binarizers import BinarizerConfig, get
from bnn_export.checkpoint import Checkpoint, save_checkpoint
from bnn_export.convert.source import Source
from bnn_export.convert.tflite_pipeline import convert_tflite
from bnn_export.errors import BnnExportError
from bnn_export.models import arch_spec
from bnn_export.models.evaluation import predict
from bnn_export.models.torch_build import torch_state
from bnn_export.runtime.runners import LceRunner
from tests.conftest import run_cli
from tests.test_onnx_export import CONFIGS, LOGIT_RTOL, SIGN_RTOL, _digits, _model


def _assert_lce_matches(model: torch.nn.Module, got: np.ndarray, x: np.ndarray) -> None:
    """LCE's logits equal torch's, except on samples that float32 rounding can change.

    LCE's interpreter exposes no intermediate tensors, so the value every binary layer
    takes the sign of is read from our ONNX export of the same graph
    (``accumulators=True``). A sample whose logits differ from torch's beyond float32
    rounding of the float layers must have such a value within rounding of 0 (SIGN_RTOL
    of the layer's largest, as in tests/test_onnx_export.py): there another CPU's float
    kernels may binarize it the other way. Which samples flip depends on the CPU; that
    only near-zero samples may differ does not. A real conversion bug moves samples far
    from 0 too, and most samples: at least half must match.
    """
    from bnn_export.convert.graph import graph_from_torch
    from bnn_export.convert.onnx_export import to_onnx
    from bnn_export.runtime.runners import OnnxRuntimeRunner

    graph = graph_from_torch(model, tuple(x.shape[1:]))  # type: ignore[arg-type]
    proto = to_onnx(graph, target="onnxruntime", accumulators=True)
    out = OnnxRuntimeRunner(proto.SerializeToString()).outputs(x)
    near_zero = np.zeros(len(x), dtype=bool)
    for node in graph.binary_nodes():
        values = np.abs(out[f"{node.name}_binput"].reshape(len(x), -1))
        near_zero |= (values <= SIGN_RTOL * values.max(axis=1, keepdims=True)).any(axis=1)
    ref = predict(model, x)
    assert got.shape == ref.shape and np.isfinite(got).all()
    tol = LOGIT_RTOL * max(1.0, float(np.abs(ref).max()))
    differ = np.abs(got - ref).max(axis=1) > tol
    far = np.flatnonzero(differ & ~near_zero)
    assert far.size == 0, (
        f"{far.size} samples differ from torch with every binarized value far from 0, "
        f"e.g. sample {far[:1]}: max |diff| {np.abs(got - ref)[far[:1]].max():.3g} (tol {tol:.3g})"
    )
    assert differ.sum() <= len(x) / 2, f"{int(differ.sum())} of {len(x)} samples differ"


def _serving_signature(data: bytes) -> tuple[list[str], int]:
    """(input names, output count) of the file's ``serving_default`` signature, whose
    tensors must be the subgraph's inputs and outputs."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    (sig,) = [s for s in model.signatureDefs or [] if s.signatureKey == b"serving_default"]
    graph = model.subgraphs[sig.subgraphIndex]
    assert [t.tensorIndex for t in sig.inputs] == list(graph.inputs)
    assert [t.tensorIndex for t in sig.outputs] == list(graph.outputs)
    return [t.name.decode() for t in sig.inputs], len(sig.outputs)


def _source(
    arch: str, config: BinarizerConfig, pad_value: float = 1.0
) -> tuple[Source, torch.nn.Module]:
    model, _ = _model(arch, config, pad_value)
    spec = arch_spec(arch, pad_value=pad_value)
    ckpt = Checkpoint("torch", spec, config, "digits", torch_state(model))
    return Source(ckpt, "<memory>", model), model


@pytest.mark.parametrize("name", list(CONFIGS))
def test_digits_every_binarizer_becomes_lce_bconv_and_matches(name: str) -> None:
    source, model = _source("digits", CONFIGS[name])
    data, facts = convert_tflite(source)
    assert facts["binary_ops"] == facts["binary_layers"] == 3 and not facts["float_fallbacks"]
    assert _serving_signature(data) == (["input"], 1)
    _, x, _ = _digits((1, 8, 8))
    _assert_lce_matches(model, LceRunner(data).predict(x), x)


@pytest.mark.parametrize(
    "arch, name, pad_value, bconvs, fallbacks",
    [
        ("resnet20", "ste", 1.0, 18, 0),
        ("resnet20", "siman", 1.0, 18, 0),  # centring before the +1 pad keeps strided convs binary
        ("resnet20", "sdbnn-se", 1.0, 18, 0),
        ("resnet20", "ste", 0.0, 16, 2),  # strided convs with zero padding stay exact float convs
        ("vgg-small", "irnet", 1.0, 5, 0),
    ],
)
def test_cifar_models_convert_with_expected_bconv_counts(
    arch: str, name: str, pad_value: float, bconvs: int, fallbacks: int
) -> None:
    source, model = _source(arch, CONFIGS[name], pad_value)
    data, facts = convert_tflite(source)
    assert facts["binary_ops"] == bconvs and len(facts["float_fallbacks"]) == fallbacks
    _, x, _ = _digits((3, 32, 32))
    x = x[:48]
    _assert_lce_matches(model, LceRunner(data).predict(x), x)


def test_resnet18_binary_file_is_10x_smaller_than_float() -> None:
    binary, _ = _source("resnet18", get("ste"))
    floating, float_model = _source("resnet18", get("none"))
    b, facts = convert_tflite(binary)
    f, ffacts = convert_tflite(floating)
    assert facts["binary_ops"] == 16 and ffacts["binary_ops"] == 0
    assert len(f) / len(b) >= 10, (len(f), len(b))
    # regression: the float model's stride-2 3x3 convs (padding 1) were exported as a
    # symmetric Pad + VALID conv, which LCE 0.16 rewrites to "same" (pads bottom/right):
    # 11% agreement. Float ops have no sign flips, so this must match closely.
    _, x, _ = _digits((3, 32, 32))
    got, ref = LceRunner(f).predict(x[:16]), predict(float_model, x[:16])
    np.testing.assert_allclose(got, ref, atol=1e-3 * max(1.0, float(np.abs(ref).max())))


def test_cli_convert_refuses_unexportable_layer_and_writes_nothing(tmp_path: Path) -> None:
    """A SiMaN model trained with the {0,1} code cannot be a binary conv: named error, no file."""
    model, _ = _model("digits", get("siman", code="01"))
    ckpt = Checkpoint(
        "torch", arch_spec("digits"), get("siman", code="01"), "digits", torch_state(model)
    )
    save_checkpoint(tmp_path / "run" / "checkpoint.safetensors", ckpt)
    out = tmp_path / "out.tflite"
    res = run_cli("convert", str(tmp_path / "run"), "--format", "tflite", "-o", str(out))
    assert res.returncode == 2 and "code '01'" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_pruned_layers_are_refused_by_name() -> None:
    source, _ = _source("digits", get("equal_bits", prune_rate=0.4))
    with pytest.raises(BnnExportError, match="pruned"):
        convert_tflite(source)


def test_larq_float_baseline_converts_without_lce_ops(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert (
        run_cli(
            "train",
            "--framework",
            "larq",
            "--binarizer",
            "none",
            "--epochs",
            "1",
            "-o",
            str(run),
            "--quiet",
        ).returncode
        == 0
    )
    res = run_cli(
        "convert", str(run), "--format", "tflite", "-o", str(tmp_path / "f.tflite"), "--json"
    )
    assert res.returncode == 0, res.stderr
    import json

    out = json.loads(res.stdout)
    assert out["facts"]["binary_ops"] == 0 and out["facts"]["binary_layers"] == 0


@pytest.mark.parametrize(
    "name, pad_value, fallbacks",
    [
        ("siman", 1.0, []),  # centring, +1 pad, then sign: strided convs stay binary
        ("sdbnn", 1.0, []),  # same with the SE shift
        ("ste", 0.0, ["layers_3_conv1", "layers_6_conv1"]),  # zero pad of sign(x): float
    ],
)
def test_larq_resnet20_bconv_count(
    tmp_path: Path, name: str, pad_value: float, fallbacks: list[str]
) -> None:
    """Larq ResNet-20: every binary conv becomes an LceBconv2d, except strided convs
    padded with 0 (LCE cannot express them), which are named as exact float convs."""
    import json

    from bnn_export.models.larq_build import build_larq_model, larq_state

    arch = arch_spec("resnet20", pad_value=pad_value)
    model = build_larq_model(arch, get(name), seed=0)
    ckpt = Checkpoint("larq", arch, get(name), "digits", larq_state(model))
    save_checkpoint(tmp_path / "run" / "checkpoint.safetensors", ckpt)
    res = run_cli("convert", str(tmp_path / "run"), "--format", "tflite", "-o", str(tmp_path / "m.tflite"),
                  "--no-validate", "--json")  # fmt: skip
    assert res.returncode == 0, res.stderr
    facts = json.loads(res.stdout)["facts"]
    assert facts["binary_ops"] == facts["binary_layers"] == 18 - len(fallbacks)
    assert facts["float_fallbacks"] == fallbacks


def test_larq_tiny_weight_scale_is_a_named_float_fallback(tmp_path: Path) -> None:
    """LCE keeps a conv whose output channel has a weight scale <= 2^-23 float (as in the
    PyTorch route): the Larq route declares it and the file still matches the model."""
    import json

    from bnn_export.models.larq_build import build_larq_model, larq_state

    arch = arch_spec("digits")
    model = build_larq_model(arch, get("siman"), seed=0)
    quantizer = model.get_layer("conv2").kernel_quantizer
    alpha = quantizer.alpha.numpy()
    alpha[3] = 1e-9
    quantizer.alpha.assign(alpha)
    ckpt = Checkpoint("larq", arch, get("siman"), "digits", larq_state(model))
    save_checkpoint(tmp_path / "run" / "checkpoint.safetensors", ckpt)
    res = run_cli("convert", str(tmp_path / "run"), "--format", "tflite", "-o", str(tmp_path / "m.tflite"),
                  "--json")  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["facts"]["binary_ops"] == out["facts"]["binary_layers"] == 2
    assert out["facts"]["float_fallbacks"] == ["conv2"]
    assert out["validation"]["agreement"] >= 0.995, out["validation"]


def test_lce_server_converts_larq_checkpoints_and_torch_graphs(tmp_path: Path) -> None:
    """One LceServer child converts a Larq checkpoint as ``convert_tflite`` does (same
    facts, LCE output == Keras) and then a PyTorch export graph."""
    from bnn_export.convert.graph import graph_from_torch
    from bnn_export.convert.tflite_pipeline import LceServer
    from bnn_export.models.larq_build import build_larq_model, larq_state
    from bnn_export.models.larq_build import predict as larq_predict

    arch = arch_spec("digits")
    model = build_larq_model(arch, get("ste"), seed=0)
    save_checkpoint(
        tmp_path / "run" / "checkpoint.safetensors",
        Checkpoint("larq", arch, get("ste"), "digits", larq_state(model)),
    )
    x = _digits((1, 8, 8))[1][:32]
    source, torch_model = _source("digits", get("ste"))
    with LceServer() as lce:
        blob, facts = lce.convert_checkpoint(tmp_path / "run", {"note": "test"})
        graph_blob, graph_facts = lce.convert(graph_from_torch(torch_model, (1, 8, 8)))
    assert facts["binary_ops"] == facts["binary_layers"] == 3 and not facts["float_fallbacks"]
    assert graph_facts["binary_ops"] == graph_facts["binary_layers"] == 3
    np.testing.assert_allclose(LceRunner(blob).predict(x), larq_predict(model, x), atol=1e-4)
    _assert_lce_matches(torch_model, LceRunner(graph_blob).predict(x), x)


def test_larq_siman_vgg_small_convs_all_become_lce_bconv(tmp_path: Path) -> None:
    """Regression: SiMaN's quantized kernels are computed in the graph (ranks -> bool ->
    cast -> * alpha); LCE constant-folded them only for small kernels, so 4 of
    VGG-Small's 5 binary convs became float CONV_2D (1 LceBconv2d, 4.8 MB). The worker
    now freezes quantized kernels to constants before converting."""
    from bnn_export.convert.tflite_pipeline import LceServer
    from bnn_export.models.larq_build import build_larq_model, larq_state

    arch = arch_spec("vgg-small")
    model = build_larq_model(arch, get("siman"), seed=0)
    save_checkpoint(
        tmp_path / "run" / "checkpoint.safetensors",
        Checkpoint("larq", arch, get("siman"), "digits", larq_state(model)),
    )
    with LceServer() as lce:
        blob, facts = lce.convert_checkpoint(tmp_path / "run")
    assert facts["binary_ops"] == facts["binary_layers"] == 5, facts["ops"]
    assert "CONV_2D" in facts["ops"] and facts["ops"]["CONV_2D"] == 1  # the float first conv
    assert len(blob) < 1_500_000, len(blob)


_GRAPHDEF_CHILD = """
import json, sys, warnings
import numpy as np
import larq_compute_engine as lce
from larq_compute_engine.tflite.python.interpreter import Interpreter
from tensorflow.lite.python import schema_py_generated as schema
from torch import nn
from bnn_export.convert.graph import graph_from_torch
from bnn_export.convert.keras_export import build_keras_model
from bnn_export.convert.lce_worker import convert_via_graphdef, finish_flatbuffer
from bnn_export.models.layers import BinaryConv2d
from bnn_export.binarizers import get
from tests.test_export_ops import CASES

if sys.argv[1] == "strided-bconv":  # a +1 pad before a strided binary conv: a Lambda layer
    torch_model = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8),
        BinaryConv2d(8, 8, 3, stride=2, padding=1, binarizer=get("ste"), pad_value=1.0),
        nn.BatchNorm2d(8), nn.Flatten()).eval()
    shape = (1, 9, 9)
else:
    torch_model, shape = CASES[sys.argv[1]]
model = build_keras_model(graph_from_torch(torch_model.eval(), shape))[0]
ours = convert_via_graphdef(model)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    theirs = lce.convert_keras_model(model, target="arm")
signed = finish_flatbuffer(ours, ("x", b"{}"), (model.input_names, model.output_names))

def signatures(buf):
    m = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(buf, 0))
    return [[s.signatureKey.decode(), s.subgraphIndex,
             [(t.name.decode(), int(t.tensorIndex)) for t in s.inputs],
             [(t.name.decode(), int(t.tensorIndex)) for t in s.outputs]]
            for s in m.signatureDefs or []]

x = np.random.default_rng(0).standard_normal((4, *model.inputs[0].shape[1:])).astype("float32")
print("RESULT " + json.dumps({
    "fell_back": any("falling back to graphdef" in str(w.message) for w in caught),
    "same_bytes": ours == theirs,
    "same_outputs": bool((Interpreter(signed).predict(x) == Interpreter(theirs).predict(x)).all()),
    "ours": signatures(signed), "theirs": signatures(theirs),
}))
"""


def _graphdef_vs_lce(case: str) -> dict:  # type: ignore[type-arg]
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        [sys.executable, "-c", _GRAPHDEF_CHILD, case],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line.removeprefix("RESULT "))  # type: ignore[no-any-return]


def test_graphdef_conversion_gives_lces_own_bytes_where_it_falls_back() -> None:
    """The LCE worker converts the frozen GraphDef directly, skipping
    ``convert_keras_model``'s SavedModel attempt, which fails for models with Lambda
    layers (here the +1 pad of a strided binary conv): byte for byte LCE's own
    fallback."""
    got = _graphdef_vs_lce("strided-bconv")
    assert got["fell_back"], "LCE's SavedModel path now works for this model: revisit"
    assert got["same_bytes"]
    assert got["theirs"] == [] and got["ours"][0][0] == "serving_default"


def test_graphdef_conversion_matches_lces_savedmodel_path() -> None:
    """Where LCE's SavedModel path works (no Lambda layers), ours computes the same
    outputs and carries the same serving signature (keys and tensors)."""
    got = _graphdef_vs_lce("rsign-bconv")
    assert not got["fell_back"] and got["same_outputs"]
    assert got["ours"] == got["theirs"] and got["ours"][0][0] == "serving_default"
