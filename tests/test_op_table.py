"""The op table (bnn_export/convert/ops): every op complete, the tracer and both emitters
driven by it alone, refusals that name what they refuse. Cheap: no TensorFlow import."""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx.reference import ReferenceEvaluator
from torch import nn

from bnn_export.binarizers import get
from bnn_export.convert.graph import Graph, Node, graph_from_torch
from bnn_export.convert.keras_export import check_tflite_exportable
from bnn_export.convert.onnx_export import TARGETS, to_onnx
from bnn_export.convert.ops import OPS, NoAttrs, Op, OpAttrs, register, unregister
from bnn_export.errors import BnnExportError
from bnn_export.models.blocks import RPReLU, RSign
from bnn_export.models.layers import BinaryConv2d, BinaryLinear


class AllOps(nn.Module):
    """Every op of the table once (binary layers with a binarizer and the float baseline)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.clip = nn.Hardtanh()
        self.bconv = BinaryConv2d(8, 8, 3, binarizer=get("ste"), padding=1)
        self.fconv = BinaryConv2d(8, 8, 3, binarizer=get("none"), padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(2, stride=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.ident = nn.Identity()
        self.flatten = nn.Flatten()
        self.blin = BinaryLinear(16 * 3 * 3, 16, binarizer=get("irnet"))
        self.flin = BinaryLinear(16, 16, binarizer=get("none"))
        self.fc = nn.Linear(16, 10)
        # the ops of issue 13 (ReActNet's RSign is fused into bconv2: no node of its own)
        self.prelu = nn.PReLU(8)
        self.rsign = RSign(8)
        self.bconv2 = BinaryConv2d(8, 8, 1, binarizer=get("ste"))
        self.rprelu = RPReLU(16)
        self.relu6 = nn.ReLU6()
        self.drop = nn.Dropout(0.5)
        self.softmax = nn.Softmax(dim=1)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.clip(self.relu(self.stem(x)))
        x = torch.add(self.bconv(x), self.fconv(x))
        x = self.prelu(self.ident(self.avg(self.pool(self.bn(x) + x))))
        x = self.rprelu(torch.cat([x, self.bconv2(self.rsign(x))], dim=1))
        x = self.relu6(x * self.scale.view(1, -1, 1, 1) + 0.5)
        y = self.flin(self.blin(torch.flatten(x, 1))) + self.flatten(self.gap(x))
        return self.softmax(self.fc(self.drop(y + x.mean((2, 3)).view(x.size(0), -1))))


def _all_ops_graph() -> Graph:
    torch.manual_seed(0)
    return graph_from_torch(AllOps(), (3, 8, 8))


def test_every_op_is_complete() -> None:
    for name, op in OPS.items():
        assert isinstance(op, Op) and op.name == name
        assert issubclass(op.attrs_type, OpAttrs) and dataclasses.is_dataclass(op.attrs_type)
        assert op.attrs_type.__dataclass_params__.frozen, name  # type: ignore[attr-defined]
        # a shape rule and both emissions (Op's are abstract: a definition without them
        # cannot be registered); a refusal is an emission that raises BnnExportError
        for method in ("out_shape", "to_onnx", "to_keras"):
            assert getattr(type(op), method) is not getattr(Op, method), (name, method)
        if name != "input":  # the tracer's placeholder
            assert op.modules or op.functions, f"{name}: no PyTorch pattern"
            assert op.pattern, f"{name}: no description for error messages"


def test_an_incomplete_or_duplicate_definition_is_refused() -> None:
    class NoKeras(Op[NoAttrs]):
        name = "no_keras"

        def out_shape(self, node: Node, inputs: list[tuple[int, ...]]) -> tuple[int, ...]:
            return inputs[0]

        def to_onnx(self, node: Node, e: Any) -> str:
            return e.input(node)

    with pytest.raises(TypeError, match="abstract"):
        register(NoKeras)
    assert "no_keras" not in OPS

    class Again(NoKeras):
        name = "relu"

        def to_keras(self, node: Node, e: Any) -> Any:
            return e.input(node)

    with pytest.raises(ValueError, match="'relu' is defined twice"):
        register(Again)

    @dataclass
    class Mutable:
        x: int = 0

    class Loose(Again):
        name = "loose"
        attrs_type = Mutable

    with pytest.raises(TypeError, match="frozen dataclass"):
        register(Loose)


def test_the_tracer_uses_every_op_and_both_emitters_take_them() -> None:
    graph = _all_ops_graph()
    assert {n.op for n in graph.nodes} == set(OPS) - {"rsign"}  # fused into bconv2
    assert all(isinstance(n.attrs, OPS[n.op].attrs_type) for n in graph.nodes)
    assert [n.label for n in graph.binary_nodes()] == ["bconv", "bconv2", "blin"]
    fused = graph.binary_nodes()[1].attrs.activation
    assert fused.kind == "threshold" and fused.threshold.shape == (8,)
    assert graph.shapes()[graph.output] == (1, 10)
    for target in TARGETS:
        onnx.checker.check_model(to_onnx(graph, target=target))
    check_tflite_exportable(graph)


def test_the_graph_pickles() -> None:
    graph = _all_ops_graph()
    copy = pickle.loads(pickle.dumps(graph))
    assert [(n.name, n.op, n.inputs, n.module) for n in copy.nodes] == [
        (n.name, n.op, n.inputs, n.module) for n in graph.nodes
    ]
    assert copy.bit_ratios() == graph.bit_ratios()
    for target in TARGETS:
        assert (
            to_onnx(copy, target=target).SerializeToString()
            == to_onnx(graph, target=target).SerializeToString()
        )


def test_importing_the_table_and_emitters_imports_no_tensorflow() -> None:
    code = (
        "import sys, bnn_export.convert.graph, bnn_export.convert.keras_export, "
        "bnn_export.convert.onnx_export; "
        "assert not {'tensorflow', 'tf_keras', 'larq'} & set(sys.modules), 'TF imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (nn.GELU(), "layer 'act' of type GELU cannot be exported"),
        (nn.LPPool2d(2, 2), "layer 'act' of type LPPool2d cannot be exported"),
        (nn.Upsample(scale_factor=2), "layer 'act' of type Upsample cannot be exported"),
    ],
)
def test_the_tracer_refuses_a_module_outside_the_table(layer: nn.Module, message: str) -> None:
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(1, 2, 3))
    model.add_module("act", layer)
    with pytest.raises(BnnExportError, match=message) as err:
        graph_from_torch(model, (1, 6, 6))
    assert "Conv2d" in str(err.value.hint) and "PReLU" in str(err.value.hint)


def test_the_tracer_refuses_a_function_outside_the_table() -> None:
    class Sig(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(x)

    with pytest.raises(BnnExportError, match=r"torch.sigmoid \(sigmoid\) in the model's forward"
                       r" at .*test_op_table.py.* cannot be exported") as err:  # fmt: skip
        graph_from_torch(Sig(), (1, 4, 4))
    assert "torch.cat" in str(err.value.hint) and "PReLU" in str(err.value.hint)


def test_nodes_check_their_attributes() -> None:
    with pytest.raises(BnnExportError, match="unknown export op 'gelu'; valid: .*relu"):
        Node("s", "gelu", ["x"])
    with pytest.raises(BnnExportError, match="op 'maxpool' takes PoolAttrs attributes"):
        Node("p", "maxpool", ["x"], NoAttrs())
    with pytest.raises(TypeError, match=r"node.module, or node.label"):
        _all_ops_graph().binary_nodes()[0].attrs["module"]


@dataclass(frozen=True, eq=False)
class _SigmoidAttrs(OpAttrs):
    pass


class _Sigmoid(Op[_SigmoidAttrs]):
    """A new op, defined in one place only."""

    name = "sigmoid_test"
    attrs_type = _SigmoidAttrs
    pattern = "Sigmoid"
    modules = (nn.Sigmoid,)

    def from_module(self, name: str, m: nn.Module) -> _SigmoidAttrs:
        return _SigmoidAttrs()

    def out_shape(self, node: Node, inputs: list[tuple[int, ...]]) -> tuple[int, ...]:
        return inputs[0]

    def to_onnx(self, node: Node, e: Any) -> str:
        return e.node("Sigmoid", [e.input(node)], node.name)

    def to_keras(self, node: Node, e: Any) -> Any:
        return e.keras.layers.Activation("sigmoid", name=e.name(node))(e.input(node))


def test_a_new_op_is_one_definition() -> None:
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(12, 2))
    with pytest.raises(BnnExportError, match="type Sigmoid cannot be exported"):
        graph_from_torch(model, (1, 4, 4))
    register(_Sigmoid)
    try:
        graph = graph_from_torch(model, (1, 4, 4))
        assert [n.op for n in graph.nodes][2] == "sigmoid_test"
        x = np.random.default_rng(0).normal(size=(2, 1, 4, 4)).astype(np.float32)
        (got,) = ReferenceEvaluator(to_onnx(graph, target="reference")).run(None, {"input": x})
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    finally:
        unregister("sigmoid_test")
