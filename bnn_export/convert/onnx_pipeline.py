"""checkpoint -> .onnx bytes (+ what to verify in them)."""

from __future__ import annotations

from typing import Any

from bnn_export.convert.graph import Graph, graph_from_torch
from bnn_export.convert.onnx_export import openvino_float_layers, to_onnx
from bnn_export.convert.source import Source
from bnn_export.errors import BnnExportError


def convert_onnx(source: Source, *, target: str) -> tuple[bytes, dict[str, Any]]:
    """(.onnx bytes, facts: expected/found binary op counts)."""
    if source.model is None:
        raise BnnExportError(
            f"ONNX export of {source.checkpoint.framework!r} checkpoints is not supported",
            hint="export larq models with --format tflite, or train with --framework torch",
        )
    graph = graph_from_torch(source.model, source.input_shape)
    return onnx_artifact(graph, target=target, metadata=source.metadata(graph.bit_ratios()))


def onnx_artifact(
    graph: Graph, *, target: str, metadata: dict[str, Any]
) -> tuple[bytes, dict[str, Any]]:
    """An export graph -> (.onnx bytes, facts: expected/found binary op counts)."""
    model = to_onnx(graph, target=target, metadata=metadata)
    op = {"onnxruntime": "BinaryConv2d", "openvino": "FakeQuantize"}.get(target)
    found = sum(1 for n in model.graph.node if n.op_type == op) if op else len(graph.binary_nodes())
    fallbacks = openvino_float_layers(graph) if target == "openvino" else []
    facts = {
        "binary_layers": len(graph.binary_nodes()) - len(fallbacks),
        "binary_ops": found,
        "binary_op": op or "sign+Conv",
        "float_fallbacks": fallbacks,
    }
    return model.SerializeToString(), facts
