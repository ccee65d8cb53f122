"""``bnn-export inspect``: ops, parameters and bnn-export metadata of an artifact."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bnn_export.artifacts import read_artifact


def inspect_file(path: str | Path) -> dict[str, Any]:
    kind, data = read_artifact(path)
    info = inspect_onnx(data) if kind == "onnx" else inspect_tflite(data)
    return {"path": str(path), "format": kind, "bytes": len(data), **info}


def inspect_onnx(data: bytes) -> dict[str, Any]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(data)
    inits = {t.name: t for t in model.graph.initializer}
    ops = Counter(f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in model.graph.node)
    binary_params = 0
    binary_inputs: set[str] = set()
    layers = []
    for n in model.graph.node:
        if n.op_type == "BinaryConv2d":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            w = inits[n.input[1]]
            o, kh, kw = w.dims[0], w.dims[1], w.dims[2]
            count = o * kh * kw * attrs["channels_in"] // attrs.get("group", 1)
            binary_params += count
            binary_inputs.add(n.input[1])
            layers.append({"name": n.name, "binary_params": int(count)})
    float_params = sum(
        int(np.prod(t.dims))
        for name, t in inits.items()
        if name not in binary_inputs and numpy_helper.to_array(t).dtype.kind == "f"
    )
    meta = {p.key: _maybe_json(p.value) for p in model.metadata_props}
    return {
        "ops": dict(sorted(ops.items())),
        "binary_params": binary_params,
        "float_params": float_params,
        "binary_layers": layers,
        "metadata": meta,
    }


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def tflite_op_names(data: bytes) -> list[str]:
    """Op name of every operator in subgraph 0 (custom ops by their custom code)."""
    import tflite

    model = tflite.Model.GetRootAsModel(data, 0)
    builtin = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        custom = oc.CustomCode()
        codes.append(custom.decode() if custom else builtin.get(code, str(code)))
    sub = model.Subgraphs(0)
    return [codes[sub.Operators(j).OpcodeIndex()] for j in range(sub.OperatorsLength())]


def tflite_metadata(data: bytes) -> dict[str, Any]:
    import tflite

    model = tflite.Model.GetRootAsModel(data, 0)
    out: dict[str, Any] = {}
    for i in range(model.MetadataLength()):
        m = model.Metadata(i)
        name = m.Name().decode()
        raw = model.Buffers(m.Buffer()).DataAsNumpy()
        blob = bytes(raw) if isinstance(raw, np.ndarray) else b""
        if name == "bnn_export":
            out.update(json.loads(blob.decode()))
        else:
            out[name] = f"<{len(blob)} bytes>"
    return out


def inspect_tflite(data: bytes) -> dict[str, Any]:
    import tflite

    model = tflite.Model.GetRootAsModel(data, 0)
    ops = Counter(tflite_op_names(data))
    sub = model.Subgraphs(0)
    binary_params = float_params = 0
    layers = []
    names = tflite_op_names(data)
    for j in range(sub.OperatorsLength()):
        op = sub.Operators(j)
        if names[j] != "LceBconv2d":
            continue
        filt = sub.Tensors(op.Inputs(1))
        shape = filt.ShapeAsNumpy()  # [O, KH, KW, words] bitpacked int32
        opts = _lce_channels_in(op)
        count = int(shape[0] * shape[1] * shape[2] * (opts or shape[3] * 32))
        binary_params += count
        layers.append({"name": sub.Tensors(op.Outputs(0)).Name().decode(), "binary_params": count})
    for t in range(sub.TensorsLength()):
        tensor = sub.Tensors(t)
        buf = model.Buffers(tensor.Buffer())
        if buf is not None and buf.DataLength() > 0 and tensor.Type() == tflite.TensorType.FLOAT32:
            float_params += int(np.prod(tensor.ShapeAsNumpy())) if tensor.ShapeLength() else 1
    return {
        "ops": dict(sorted(ops.items())),
        "binary_params": binary_params,
        "float_params": float_params,
        "binary_layers": layers,
        "metadata": tflite_metadata(data),
    }


def _lce_channels_in(op: Any) -> int | None:
    """channels_in from LceBconv2d's flexbuffer custom options, if readable."""
    raw = op.CustomOptionsAsNumpy()
    if not isinstance(raw, np.ndarray):
        return None
    try:
        from flatbuffers import flexbuffers

        value = flexbuffers.Loads(bytes(raw))
    except (ValueError, TypeError, IndexError):
        return None
    return int(value["channels_in"]) if isinstance(value, dict) and "channels_in" in value else None


def format_report(info: dict[str, Any]) -> str:
    lines = [f"{info['path']}: {info['format']}, {info['bytes']:,} bytes"]
    lines.append(
        f"  1-bit params: {info['binary_params']:,}   float params: {info['float_params']:,}"
    )
    lines.append("  ops:")
    lines += [f"    {count:4d}  {op}" for op, count in info["ops"].items()]
    meta = info.get("metadata", {})
    if meta:
        lines.append("  metadata:")
        for k, v in sorted(meta.items()):
            lines.append(
                f"    {k}: {json.dumps(v, sort_keys=True) if not isinstance(v, str) else v}"
            )
    return "\n".join(lines)
