"""Child process for LCE conversion: ``python -m bnn_export.convert.lce_worker JOB_DIR``.

LCE's converter can abort the whole process, so the CLI runs it here. JOB_DIR holds
``job.json`` ({"kind": "graph"|"checkpoint", "metadata": {...}}) and either ``graph.pkl``
(an export graph written by the parent in this private temp dir) or the checkpoint path
and, when the parent fixed its bit ratios, ``fixed.npz`` (the fixed bits and batch-norm
statistics, applied with ``larq_build.apply_fixed_state``); the child writes
``model.tflite`` and ``result.json``. A checkpoint job's metadata gets the converted
model's per-layer ``bit_ratios``.

``python -m bnn_export.convert.lce_worker --serve`` converts many jobs in one process
(one TensorFlow import): it reads one JOB_DIR per line on stdin and answers ``ok`` or
``error <message>`` per line on stdout (used to batch conversions, e.g. in fuzz tests).
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def add_metadata(flatbuffer: bytes, name: str, payload: bytes) -> bytes:
    """A copy of a TFLite model with one more metadata entry (name -> new buffer)."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flatbuffer, 0))
    buffer = schema.BufferT()
    buffer.data = list(payload)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def larq_float_reason(layer: Any) -> str | None:
    """Why LCE 0.16 keeps binary Larq ``layer`` an exact float conv (None if it does not);
    the Larq counterpart of ``keras_export.lce_float_reason`` (docs/larq.md)."""
    from bnn_export.convert.keras_export import lce_scale_reason
    from bnn_export.models.larq_build import export_layer
    from bnn_export.models.larq_layers import TorchPadQuantConv2D

    if reason := lce_scale_reason(export_layer(layer).scale):
        return reason
    if isinstance(layer, TorchPadQuantConv2D) and not layer.pad_before_sign:
        return "a strided conv padding its binarized input with 0"
    return None


def main(job_dir: str) -> int:
    run_job(Path(job_dir))
    return 0


def serve() -> int:
    """Convert the job dirs named on stdin, one per line; answer one line each."""
    for line in sys.stdin:
        job_dir = line.strip()
        if not job_dir:
            continue
        try:
            run_job(Path(job_dir))
            answer = "ok"
        except Exception as exc:  # noqa: BLE001 -- reported to the parent, which decides
            answer = "error " + f"{type(exc).__name__}: {exc}".replace("\n", " ")[:2000]
        sys.stdout.write(answer + "\n")
        sys.stdout.flush()
    return 0


def run_job(job_path: Path) -> None:
    job: dict[str, Any] = json.loads((job_path / "job.json").read_text())
    import larq_compute_engine as lce

    if job["kind"] == "graph":
        from bnn_export.convert.keras_export import build_keras_model

        with (job_path / "graph.pkl").open("rb") as f:
            graph = pickle.load(f)  # written by our parent process in a private temp dir
        model, fallbacks = build_keras_model(graph)
        binary_layers = len(graph.binary_nodes())
    else:
        from bnn_export.checkpoint import load_checkpoint
        from bnn_export.models.larq_build import (
            apply_fixed_state,
            freeze_quantized_kernels,
            larq_model_from_checkpoint,
            layer_bit_ratios,
        )
        from bnn_export.models.larq_build import binary_layers as larq_binary_layers

        ckpt = load_checkpoint(job["checkpoint"])
        model = larq_model_from_checkpoint(ckpt)
        if job.get("fixed_state"):
            import numpy as np

            with np.load(job_path / job["fixed_state"], allow_pickle=False) as arrays:
                apply_fixed_state(model, dict(arrays))  # what the parent fixed and verified
        layers = larq_binary_layers(model) if ckpt.binarizer.binary else []
        fallbacks = [layer.name for layer in layers if larq_float_reason(layer)]
        job["metadata"]["bit_ratios"] = layer_bit_ratios(model)
        freeze_quantized_kernels(model)
        binary_layers = len(layers)
    flatbuffer = lce.convert_keras_model(model, target="arm")
    payload = json.dumps(job["metadata"], sort_keys=True).encode()
    (job_path / "model.tflite").write_bytes(add_metadata(flatbuffer, "bnn_export", payload))
    (job_path / "result.json").write_text(
        json.dumps({"binary_layers": binary_layers, "fallbacks": fallbacks})
    )


if __name__ == "__main__":
    sys.exit(serve() if sys.argv[1] == "--serve" else main(sys.argv[1]))
