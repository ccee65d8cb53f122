"""The literature's BNNs in the zoo (Bi-Real Net-18, ReActNet-A, QuickNet) and the
activation modules their blocks are written with (RSign, RPReLU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bnn_export
from bnn_export.binarizers import get
from bnn_export.models import arch_spec
from bnn_export.models.layers import binary_layers
from bnn_export.models.torch_build import build_torch_model

NEW = ("birealnet18", "reactnet-a", "quicknet")


def test_rsign_forward_and_gradients_match_the_formula() -> None:
    torch.manual_seed(0)
    sign = bnn_export.RSign(3)
    with torch.no_grad():
        sign.threshold.copy_(torch.tensor([0.5, -0.25, 0.0]))
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    y = sign(x)
    t = sign.threshold.detach().reshape(1, 3, 1, 1)
    assert torch.equal(y, torch.where(x.detach() >= t, 1.0, -1.0))
    at_threshold = torch.full((1, 3, 1, 1), 0.0) + t  # x == threshold gives +1
    assert (sign(at_threshold) == 1).all()
    g = torch.randn_like(y)
    y.backward(g)
    inside = ((x.detach() - t).abs() <= 1).float()
    assert torch.allclose(x.grad, g * inside)
    assert torch.allclose(sign.threshold.grad, -(g * inside).sum((0, 2, 3)))


def test_rprelu_matches_the_formula() -> None:
    torch.manual_seed(0)
    act = bnn_export.RPReLU(4)
    with torch.no_grad():
        act.gamma.copy_(torch.randn(4))
        act.zeta.copy_(torch.randn(4))
        act.prelu.weight.copy_(torch.rand(4))
    x = torch.randn(2, 4, 3, 3)
    c = lambda v: v.detach().reshape(1, 4, 1, 1)  # noqa: E731
    shifted = x - c(act.gamma)
    expected = torch.where(shifted >= 0, shifted, c(act.prelu.weight) * shifted) + c(act.zeta)
    assert torch.allclose(act(x), expected)
    assert act(x.flatten(2).mean(2)).shape == (2, 4)  # NC inputs too


@pytest.mark.parametrize(
    ("name", "params", "binary"),
    # parameters at full size (1000 classes, 224x224) and binary layers: Bi-Real-18 has
    # ResNet-18's 11.7M and 16 binary 3x3 convs; ReActNet-A 29.3M (its paper's count) and
    # 13 3x3 + 18 1x1 binary convs (5 widenings use two); QuickNetSmall 16 binary convs
    [("birealnet18", 11_689_512, 16), ("reactnet-a", 29_343_592, 31), ("quicknet", 12_656_392, 16)],
)
def test_full_size_models(name: str, params: int, binary: int) -> None:
    model = build_torch_model(arch_spec(name, num_classes=1000), get("ste"), seed=0).eval()
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(binary_layers(model)) == binary
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.parametrize("name", NEW)
def test_width_input_size_and_classes(name: str) -> None:
    spec = arch_spec(name, num_classes=7, input_shape=(1, 64, 48), width=0.25)
    assert spec["kwargs"]["width"] == 0.25
    model = build_torch_model(spec, get("irnet"), seed=0).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 48)).shape == (2, 7)
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert stem.in_channels == 1
    with pytest.raises(bnn_export.BnnExportError, match="at least 32x32"):
        build_torch_model(arch_spec(name, input_shape=(3, 16, 16)), get("ste"))


def test_width_is_refused_where_an_architecture_takes_none() -> None:
    with pytest.raises(bnn_export.BnnExportError, match="takes no width"):
        arch_spec("resnet20", width=0.5)
    with pytest.raises(bnn_export.BnnExportError, match="width must be"):
        arch_spec("quicknet", width=0.0)
    assert "width" not in arch_spec("resnet20")["kwargs"]  # recorded specs stay as they were


def test_cli_trains_a_literature_model_at_a_given_width_size_and_classes(tmp_path) -> None:
    from tests.conftest import run_cli

    out = tmp_path / "run"
    proc = run_cli(
        "train", "--model", "quicknet", "--width", "0.125", "--input-size", "32",
        "--num-classes", "12", "--dataset", "digits", "--epochs", "1", "--quiet", "-o", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    from bnn_export.checkpoint import load_checkpoint

    kw = load_checkpoint(out).arch["kwargs"]
    assert (kw["width"], kw["input_shape"], kw["num_classes"]) == (0.125, [3, 32, 32], 12)
    for args, message in [
        (("--model", "resnet20", "--width", "0.5"), "takes no width"),
        (("--num-classes", "3"), "fewer than the dataset's 10"),
        (("--framework", "larq", "--model", "quicknet"), "PyTorch only"),
    ]:
        proc = run_cli("train", *args, "--epochs", "1", "--quiet")
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_cli_reactnet_a_trains_and_converts_to_both_formats(tmp_path) -> None:
    """Issue 13's CLI path at test size (the must-show runs --input-size 64; docs/results.md):
    train reactnet-a, convert to .onnx and .tflite: every binary layer a binary op, top-1
    agreement >= 99.5% with the trained PyTorch model."""
    import json

    from tests.conftest import run_cli

    run = tmp_path / "run"
    proc = run_cli(
        "train", "--model", "reactnet-a", "--width", "0.25", "--input-size", "32",
        "--dataset", "digits", "--epochs", "1", "--quiet", "-o", str(run),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for fmt, op in (("onnx", "BinaryConv2d"), ("tflite", "LceBconv2d")):
        out = tmp_path / f"reactnet-a.{fmt}"
        proc = run_cli("convert", str(run), "--format", fmt, "-o", str(out), "--json")
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["facts"]["binary_op"] == op
        assert report["facts"]["binary_ops"] == report["facts"]["binary_layers"] == 31, report
        assert report["validation"]["ok"] and report["validation"]["agreement"] >= 0.995
        assert out.stat().st_size == report["bytes"]


@pytest.mark.parametrize("name", ["birealnet18", "reactnet-a", "quicknet"])
def test_float_twin_has_no_sign_and_exports(name: str) -> None:
    """binarizer 'none': the real-valued network (no RSign / sign left), which the speed
    table compares with; it exports to plain ONNX (no binary layer)."""
    from bnn_export.convert.graph import graph_from_torch
    from bnn_export.convert.onnx_export import to_onnx
    from bnn_export.models.blocks import RSign

    shape = (3, 32, 32)
    model = build_torch_model(arch_spec(name, input_shape=shape, width=0.125), get("none"))
    assert not any(isinstance(m, RSign) for m in model.modules())
    graph = graph_from_torch(model.eval(), shape)
    assert not graph.binary_nodes()
    ops = {n.op_type for n in to_onnx(graph, target="reference").graph.node}
    assert "BinaryConv2d" not in ops and "Where" not in ops, ops
