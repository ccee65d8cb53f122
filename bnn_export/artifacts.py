"""Reading exported artifacts safely: kind by content, size limits, clear errors.

Nothing in an artifact is executed: a .tflite is walked as a flatbuffer (every offset
checked) and an .onnx is parsed as a protobuf, both only after the size check.
"""

from __future__ import annotations

import struct
from pathlib import Path

from bnn_export.errors import BnnExportError

MAX_ARTIFACT_BYTES = 2 * 1024**3
KINDS = ("tflite", "onnx")

#: ONNX operator domains the runtimes bnn-export drives can execute.
KNOWN_ONNX_DOMAINS = {
    "": "ONNX standard ops",
    "ai.onnx": "ONNX standard ops",
    "com.bnn_export": "bnn-export's BinaryConv2d (onnxruntime target)",
    "org.openvinotoolkit": "OpenVINO's FakeQuantize (openvino target)",
}


def read_artifact(path: str | Path, *, max_bytes: int = MAX_ARTIFACT_BYTES) -> tuple[str, bytes]:
    """(kind, bytes) of a .tflite or .onnx file; refuses empty, oversized or unparsable ones."""
    p = Path(path)
    if not p.is_file():
        raise BnnExportError(
            f"no such file {str(p)!r}",
            hint="pass a .tflite or .onnx file from `bnn-export convert`",
        )
    size = p.stat().st_size
    if size == 0:
        raise BnnExportError(f"{str(p)!r} is empty (0 bytes)", hint="convert the model again")
    if size > max_bytes:
        raise BnnExportError(
            f"{str(p)!r} is {size} bytes, over the {max_bytes}-byte limit",
            hint="bnn-export reads artifacts up to MAX_ARTIFACT_BYTES; is this the right file?",
        )
    data = p.read_bytes()
    if data[4:8] == b"TFL3":
        check_tflite_structure(data, str(p))
        return "tflite", data
    if p.suffix == ".tflite":
        raise BnnExportError(
            f"{str(p)!r} is not a TFLite flatbuffer (no TFL3 identifier)",
            hint="the file is corrupt or truncated; convert again",
        )
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_from_string(data)
    except (DecodeError, ValueError, RuntimeError):
        raise BnnExportError(
            f"{str(p)!r} is neither a TFLite flatbuffer nor a valid ONNX model (corrupt or truncated?)",
            hint="convert the model again",
        ) from None
    if not model.graph.node:
        raise BnnExportError(
            f"{str(p)!r} holds no ONNX graph (corrupt or truncated?)",
            hint="convert the model again",
        )
    unknown = sorted(
        {f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in KNOWN_ONNX_DOMAINS}
    )
    if unknown:
        raise BnnExportError(
            f"{str(p)!r} uses custom op(s) {', '.join(unknown)} that no bnn-export runtime "
            "implements",
            hint="export with `bnn-export convert --format onnx --target onnxruntime|openvino|"
            "reference` (only com.bnn_export::BinaryConv2d and ONNX standard ops run)",
        )
    return "onnx", data


def check_tflite_structure(data: bytes, name: str = "<bytes>") -> None:
    """Walk the flatbuffer's operator codes, operators, tensors, buffers and metadata.

    A truncated or corrupted file has offsets past its end; the flatbuffers reader then
    raises struct.error / IndexError, which become one clear error here.
    """
    import tflite

    try:
        model = tflite.Model.GetRootAsModel(data, 0)
        for i in range(model.OperatorCodesLength()):
            oc = model.OperatorCodes(i)
            oc.BuiltinCode(), oc.DeprecatedBuiltinCode(), oc.CustomCode()
        if model.SubgraphsLength() < 1:
            raise ValueError("no subgraph")
        for s in range(model.SubgraphsLength()):
            sub = model.Subgraphs(s)
            for j in range(sub.OperatorsLength()):
                op = sub.Operators(j)
                if op.OpcodeIndex() >= model.OperatorCodesLength():
                    raise ValueError("opcode index out of range")
                op.InputsAsNumpy(), op.OutputsAsNumpy(), op.CustomOptionsAsNumpy()
            for t in range(sub.TensorsLength()):
                tensor = sub.Tensors(t)
                tensor.ShapeAsNumpy(), tensor.Name()
                if tensor.Buffer() >= model.BuffersLength():
                    raise ValueError("buffer index out of range")
        for b in range(model.BuffersLength()):
            model.Buffers(b).DataAsNumpy()
        for m in range(model.MetadataLength()):
            meta = model.Metadata(m)
            meta.Name()
            if meta.Buffer() >= model.BuffersLength():
                raise ValueError("metadata buffer index out of range")
    except (struct.error, IndexError, ValueError, TypeError, UnicodeDecodeError):
        raise BnnExportError(
            f"{name!r} is not a valid TFLite flatbuffer (corrupt or truncated)",
            hint="the file is damaged; convert the model again",
        ) from None
