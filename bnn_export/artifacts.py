"""Reading exported artifacts safely: kind by content, size limits, clear errors."""

from __future__ import annotations

from pathlib import Path

from bnn_export.errors import BnnExportError

MAX_ARTIFACT_BYTES = 2 * 1024**3
KINDS = ("tflite", "onnx")


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
        raise BnnExportError(f"{str(p)!r} is {size} bytes, over the {max_bytes}-byte limit")
    data = p.read_bytes()
    if data[4:8] == b"TFL3":
        return "tflite", data
    if p.suffix == ".tflite":
        raise BnnExportError(f"{str(p)!r} is not a TFLite flatbuffer (no TFL3 identifier)",
                             hint="the file is corrupt or truncated; convert again")  # fmt: skip
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
        raise BnnExportError(f"{str(p)!r} holds no ONNX graph (corrupt or truncated?)",
                             hint="convert the model again")  # fmt: skip
    return "onnx", data
