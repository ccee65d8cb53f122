"""checkpoint -> .tflite bytes with LCE ops, converted in a child process."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from bnn_export.convert.graph import graph_from_torch
from bnn_export.convert.source import Source
from bnn_export.errors import BnnExportError

CONVERT_TIMEOUT_S = 1200


def convert_tflite(
    source: Source, *, timeout: float = CONVERT_TIMEOUT_S
) -> tuple[bytes, dict[str, Any]]:
    """(.tflite bytes, facts: LceBconv2d count vs binary layers, float fallbacks)."""
    from bnn_export.inspect_artifact import tflite_op_names

    with tempfile.TemporaryDirectory(prefix="bnn-export-lce-") as tmp:
        job_dir = Path(tmp)
        if source.model is not None:
            graph = graph_from_torch(source.model, source.input_shape)
            bit_ratios = {
                n.attrs["module"]: float((n.attrs["weights"].bits == 1).mean())
                for n in graph.binary_nodes()
            }
            with (job_dir / "graph.pkl").open("wb") as f:
                pickle.dump(graph, f)
            job: dict[str, Any] = {"kind": "graph"}
        else:
            from bnn_export.checkpoint import resolve_checkpoint_path

            bit_ratios = {}
            job = {
                "kind": "checkpoint",
                "checkpoint": str(resolve_checkpoint_path(source.checkpoint_path)),
            }
        job["metadata"] = source.metadata(bit_ratios)
        (job_dir / "job.json").write_text(json.dumps(job))
        _run_child(job_dir, timeout)
        data = (job_dir / "model.tflite").read_bytes()
        result = json.loads((job_dir / "result.json").read_text())
    ops = Counter(tflite_op_names(data))
    facts = {
        "binary_layers": result["binary_layers"] - len(result["fallbacks"]),
        "binary_ops": ops.get("LceBconv2d", 0),
        "binary_op": "LceBconv2d",
        "float_fallbacks": result["fallbacks"],
        "ops": dict(sorted(ops.items())),
    }
    if facts["binary_ops"] == 0 and result["binary_layers"] > 0 and not result["fallbacks"]:
        raise BnnExportError(
            "LCE returned a model with no LceBconv2d ops (a silent conversion failure)",
            hint="make sure TF_USE_LEGACY_KERAS=1 and tf-keras 2.16 are in use (`make setup`)",
        )
    return data, facts


def _run_child(job_dir: Path, timeout: float) -> None:
    # TensorFlow writes temp files (autograph) that only an orderly exit removes; keep them
    # in the job dir, which the parent deletes even when the child is killed.
    child_tmp = job_dir / "tmp"
    child_tmp.mkdir(exist_ok=True)
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
           "TMPDIR": str(child_tmp)}  # fmt: skip
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bnn_export.convert.lce_worker", str(job_dir)],
            capture_output=True, text=True, timeout=timeout, env=env,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise BnnExportError(f"the LCE converter did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        how = (f"was killed by signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
               else f"exited with status {proc.returncode}")  # fmt: skip
        tail = "\n".join(line for line in proc.stderr.strip().splitlines()[-8:])
        raise BnnExportError(
            f"the LCE converter {how}:\n{tail}",
            hint="rerun with --debug; if the model has unusual layers, try --format onnx",
        )
