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


def finish_flatbuffer(
    flatbuffer: bytes,
    metadata: tuple[str, bytes],
    signature: tuple[list[str], list[str]] | None = None,
) -> bytes:
    """A copy of a TFLite model with one more metadata entry (name -> new buffer) and,
    given ``signature=(input names, output names)`` and a model without signatures, a
    ``serving_default`` signature keyed by those names (as LCE's SavedModel path writes
    it; for ``Interpreter.get_signature_runner`` and Android's ``runSignature``)."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flatbuffer, 0))
    name, payload = metadata
    buffer = schema.BufferT()
    buffer.data = list(payload)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    if signature is not None and not model.signatureDefs:
        model.signatureDefs = [_serving_signature(schema, model.subgraphs[0], *signature)]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _serving_signature(
    schema: Any, graph: Any, input_names: list[str], output_names: list[str]
) -> Any:
    if len(graph.inputs) != len(input_names) or len(graph.outputs) != len(output_names):
        raise ValueError(
            f"signature names {input_names} -> {output_names} do not match the model's "
            f"{len(graph.inputs)} inputs and {len(graph.outputs)} outputs"
        )

    def tensor_map(name: str, index: int) -> Any:
        entry = schema.TensorMapT()
        entry.name, entry.tensorIndex = name, int(index)
        return entry

    signature = schema.SignatureDefT()
    signature.signatureKey = "serving_default"
    signature.subgraphIndex = 0
    signature.inputs = [tensor_map(n, i) for n, i in zip(input_names, graph.inputs, strict=True)]
    signature.outputs = [tensor_map(n, i) for n, i in zip(output_names, graph.outputs, strict=True)]
    return signature


def convert_via_graphdef(model: Any) -> bytes:
    """A Keras model (an export graph's or a Larq checkpoint's) -> TFLite flatbuffer with
    LCE ops: LCE's own conversion of a frozen GraphDef, without ``convert_keras_model``'s
    first attempt.

    ``convert_keras_model`` first saves a SavedModel (tracing every layer through
    autograph: 10-20 s on a ResNet-20) and converts that. For models with Lambda layers
    (+1 pads of strided binary convs, SiMaN's centring) the save fails, and LCE falls back
    to freezing a concrete function of the model (batch 1) and converting its GraphDef.
    This goes there directly, for every model: byte for byte LCE's fallback, and where
    the SavedModel path works, the same outputs with other internal tensor names
    (tests/test_tflite_export.py checks both); ``finish_flatbuffer`` adds the
    ``serving_default`` signature the SavedModel path has. Without LCE's GraphDef entry
    point (another LCE version) or with fake-quantization ops, ``convert_keras_model``
    does it all.
    """
    import larq_compute_engine as lce
    import tensorflow as tf

    try:
        from larq_compute_engine.mlir._tf_tfl_flatbuffer import (
            convert_graphdef_to_tflite_flatbuffer,
        )
    except ImportError:  # pragma: no cover - LCE other than 0.16
        return bytes(lce.convert_keras_model(model, target="arm"))
    from tensorflow.core.framework.types_pb2 import DataType
    from tensorflow.lite.python.util import get_tensor_name
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    # batch 1, and the Keras input names (the .tflite input tensors' names, as LCE's)
    specs = [
        tf.TensorSpec([1, *t.shape[1:]], t.dtype, name=name)
        for t, name in zip(model.inputs, model.input_names, strict=True)
    ]

    def call(*xs: Any) -> Any:
        return model(list(xs) if len(xs) > 1 else xs[0], training=False)

    concrete = tf.function(call).get_concrete_function(*specs)
    frozen = convert_variables_to_constants_v2(concrete, lower_control_flow=False)
    inputs = [t for t in frozen.inputs if t.dtype != tf.dtypes.resource]
    graph_def = frozen.graph.as_graph_def()
    ops = {n.op for n in graph_def.node} | {
        n.op for f in graph_def.library.function for n in f.node_def
    }
    if any(op.startswith(("FakeQuant", "QuantizeAndDequantize")) for op in ops):
        # quantization-aware graphs take LCE's int8 path: leave them to it
        return bytes(lce.convert_keras_model(model, target="arm"))
    return bytes(
        convert_graphdef_to_tflite_flatbuffer(
            graph_def.SerializeToString(),
            [get_tensor_name(t) for t in inputs],
            [DataType.Name(t.dtype.as_datatype_enum) for t in inputs],
            [t.shape.as_list() for t in inputs],
            [get_tensor_name(t) for t in frozen.outputs],
            False,  # no fake-quant ops (checked above): nothing to quantize
            "arm",
            None,
        )
    )


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
    if job["kind"] == "graph":
        from bnn_export.convert.keras_export import build_keras_model

        with (job_path / "graph.pkl").open("rb") as f:
            graph = pickle.load(f)  # written by our parent process in a private temp dir
        model, fallbacks = build_keras_model(graph)
        binary_layers = len(graph.binary_nodes())
        flatbuffer = convert_via_graphdef(model)
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
        flatbuffer = convert_via_graphdef(model)
    signature = (list(model.input_names), list(model.output_names))
    payload = json.dumps(job["metadata"], sort_keys=True).encode()
    (job_path / "model.tflite").write_bytes(
        finish_flatbuffer(flatbuffer, ("bnn_export", payload), signature)
    )
    (job_path / "result.json").write_text(
        json.dumps({"binary_layers": binary_layers, "fallbacks": fallbacks})
    )


if __name__ == "__main__":
    sys.exit(serve() if sys.argv[1] == "--serve" else main(sys.argv[1]))
