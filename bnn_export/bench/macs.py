"""Multiply-accumulate and parameter counts, split into binary (1-bit) and float.

Counted per inference of one image from what the file itself says:

- .onnx: shapes from ONNX shape inference, with our ``BinaryConv2d`` read as the convolution
  it is and OpenVINO's ``FakeQuantize`` as a pass-through. A standard ``Conv`` counts as
  binary when its input comes (through ``Pad``) from a binarization (``FakeQuantize`` of the
  openvino target, ``Where(x >= 0, 1, -1)`` of the reference target).
- .tflite: tensor shapes stored in the flatbuffer; ``LceBconv2d`` is binary, ``CONV_2D``,
  ``DEPTHWISE_CONV_2D`` and ``FULLY_CONNECTED`` are float.
- a checkpoint: the export graph (``bnn_export.convert.graph``) the converters start from.

Only convolutions and fully-connected layers count; pooling, batch norm and additions are
left out, as in the MAC figures papers and LCE's model zoo give.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_BINARIZING_ONNX_OPS = ("FakeQuantize", "Where")
_PASS_THROUGH_ONNX_OPS = ("Pad", "Identity")


def _totals(layers: list[dict[str, Any]], float_params: int) -> dict[str, Any]:
    binary = [layer for layer in layers if layer["binary"]]
    return {
        "binary_macs": int(sum(layer["macs"] for layer in binary)),
        "float_macs": int(sum(layer["macs"] for layer in layers if not layer["binary"])),
        "binary_params": int(sum(layer["params"] for layer in binary)),
        "float_params": int(float_params),
        "layers": layers,
    }


# ---------------------------------------------------------------- ONNX


def count_onnx(data: bytes) -> dict[str, Any]:
    import onnx
    from onnx import helper, numpy_helper, shape_inference

    model = onnx.load_from_string(data)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    # Batch of one for counting.
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    weight_shapes: dict[str, list[int]] = {}
    rewritten = []
    for node in graph.node:
        if node.op_type == "BinaryConv2d":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            o, kh, kw = list(inits[node.input[1]].dims[:3])
            group = int(attrs.get("group", 1))
            shape = [int(o), int(attrs["channels_in"]) // group, int(kh), int(kw)]
            weight = f"{node.input[1]}__as_float"
            weight_shapes[weight] = shape
            conv_attrs = {
                k: attrs[k]
                for k in ("kernel_shape", "strides", "pads", "dilations", "group")
                if k in attrs
            }
            rewritten.append(
                helper.make_node(
                    "Conv", [node.input[0], weight], list(node.output), name=node.name, **conv_attrs
                )
            )
        elif node.op_type == "FakeQuantize":
            rewritten.append(helper.make_node("Identity", [node.input[0]], list(node.output)))
        else:
            rewritten.append(node)
    del graph.node[:]
    graph.node.extend(rewritten)
    for name, shape in weight_shapes.items():
        graph.input.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape))
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", 17))
    inferred = shape_inference.infer_shapes(model, strict_mode=False).graph
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*inferred.value_info, *inferred.input, *inferred.output]
    }
    for name, tensor in inits.items():
        shapes.setdefault(name, list(tensor.dims))

    def binarized(tensor: str) -> bool:
        node = producers.get(tensor)
        while node is not None and node.op_type in _PASS_THROUGH_ONNX_OPS:
            node = producers.get(node.input[0])
        return node is not None and node.op_type in _BINARIZING_ONNX_OPS

    layers: list[dict[str, Any]] = []
    binary_weights: set[str] = set()
    for node in rewritten:
        if node.op_type == "Conv":
            w = shapes.get(node.input[1], [])
            out = shapes.get(node.output[0], [])
            if len(w) != 4 or len(out) != 4 or not all(out):
                continue
            is_binary = node.input[1] in weight_shapes or binarized(node.input[0])
            if is_binary and node.input[1] in inits:
                binary_weights.add(node.input[1])
            macs = int(np.prod(out[1:])) * int(np.prod(w[1:]))
            layers.append(
                {
                    "name": node.name or node.output[0],
                    "kind": "conv",
                    "binary": is_binary,
                    "macs": macs,
                    "params": int(np.prod(w)),
                }
            )
        elif node.op_type in ("Gemm", "MatMul") and node.input[1] in inits:
            w = list(inits[node.input[1]].dims)
            layers.append(
                {
                    "name": node.name or node.output[0],
                    "kind": "dense",
                    "binary": False,
                    "macs": int(np.prod(w)),
                    "params": int(np.prod(w)),
                }
            )
    float_params = sum(
        int(np.prod(t.dims))
        for name, t in inits.items()
        if name not in binary_weights and numpy_helper.to_array(t).dtype.kind == "f"
    )
    return _totals(layers, float_params)


# ---------------------------------------------------------------- TFLite


def count_tflite(data: bytes) -> dict[str, Any]:
    import tflite

    from bnn_export.inspect_artifact import _lce_channels_in, tflite_op_names

    model = tflite.Model.GetRootAsModel(data, 0)
    sub = model.Subgraphs(0)
    names = tflite_op_names(data)

    def shape(index: int) -> list[int]:
        return [int(d) for d in sub.Tensors(index).ShapeAsNumpy()]

    layers: list[dict[str, Any]] = []
    for j, op_name in enumerate(names):
        op = sub.Operators(j)
        if op_name not in ("LceBconv2d", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        filt, out = shape(op.Inputs(1)), shape(op.Outputs(0))
        label = sub.Tensors(op.Outputs(0)).Name().decode()
        if op_name == "LceBconv2d":
            o, kh, kw, words = filt
            channels_in = _lce_channels_in(op) or words * 32
            in_words = shape(op.Inputs(0))[-1]
            per_group = channels_in * words // in_words if in_words > words else channels_in
            params = o * kh * kw * per_group
            macs = int(np.prod(out[1:-1])) * params
            layers.append(
                {"name": label, "kind": "conv", "binary": True, "macs": macs, "params": params}
            )
        elif op_name == "CONV_2D":
            macs = int(np.prod(out[1:])) * int(np.prod(filt[1:]))
            layers.append(
                {
                    "name": label,
                    "kind": "conv",
                    "binary": False,
                    "macs": macs,
                    "params": int(np.prod(filt)),
                }
            )
        elif op_name == "DEPTHWISE_CONV_2D":
            macs = int(np.prod(out[1:])) * int(np.prod(filt[1:3]))
            layers.append(
                {
                    "name": label,
                    "kind": "depthwise",
                    "binary": False,
                    "macs": macs,
                    "params": int(np.prod(filt)),
                }
            )
        else:
            rows = int(np.prod(out)) // max(1, filt[0])
            layers.append(
                {
                    "name": label,
                    "kind": "dense",
                    "binary": False,
                    "macs": rows * int(np.prod(filt)),
                    "params": int(np.prod(filt)),
                }
            )
    float_params = 0
    for t in range(sub.TensorsLength()):
        tensor = sub.Tensors(t)
        buf = model.Buffers(tensor.Buffer())
        if buf is not None and buf.DataLength() > 0 and tensor.Type() == tflite.TensorType.FLOAT32:
            float_params += int(np.prod(tensor.ShapeAsNumpy())) if tensor.ShapeLength() else 1
    return _totals(layers, float_params)


# ---------------------------------------------------------------- checkpoint


def count_graph(graph: Any) -> dict[str, Any]:
    """Counts of an export graph (``bnn_export.convert.graph.Graph``)."""
    shapes = graph.shapes()
    layers: list[dict[str, Any]] = []
    float_params = 0
    for n in graph.nodes:
        a = n.attrs
        label = n.label
        if n.op in ("conv", "bconv"):
            w = a.weight if n.op == "conv" else a.weights.bits
            out = shapes[n.name]
            macs = int(np.prod(out[1:])) * int(np.prod(w.shape[1:]))
            layers.append(
                {
                    "name": label,
                    "kind": "conv",
                    "binary": n.op == "bconv",
                    "macs": macs,
                    "params": int(w.size),
                }
            )
        elif n.op in ("linear", "blinear"):
            w = a.weight if n.op == "linear" else a.weights.bits
            layers.append(
                {
                    "name": label,
                    "kind": "dense",
                    "binary": n.op == "blinear",
                    "macs": int(w.size),
                    "params": int(w.size),
                }
            )
        if n.op in ("conv", "linear"):
            float_params += int(a.weight.size) + (0 if a.bias is None else int(a.bias.size))
        elif n.op in ("bconv", "blinear"):
            float_params += int(a.weights.scale.size)
        elif n.op == "bn":
            float_params += 4 * int(a.gamma.size)
    return _totals(layers, float_params)
