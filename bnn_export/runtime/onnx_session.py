"""onnxruntime sessions with bnn-export's custom ops (domain com.bnn_export) registered."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bnn_export.runtime.native import NativeLibraryError, ort_ops_library_path

if TYPE_CHECKING:
    import onnx
    import onnxruntime


def onnx_session(
    model: str | Path | bytes | onnx.ModelProto,
    *,
    num_threads: int = 1,
) -> onnxruntime.InferenceSession:
    """Create a CPU InferenceSession able to run BinaryConv2d.

    `num_threads` sets the session's intra-op thread count, which the BinaryConv2d op
    uses too (it runs through the session thread pool); 1 = single-threaded.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise NativeLibraryError(
            "onnxruntime is not installed; install the onnx extra: pip install -e '.[onnx]'"
        ) from exc
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(num_threads)
    opts.inter_op_num_threads = 1
    opts.register_custom_ops_library(ort_ops_library_path())
    if isinstance(model, Path):
        model = str(model)
    elif not isinstance(model, str | bytes):
        model = model.SerializeToString()
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
