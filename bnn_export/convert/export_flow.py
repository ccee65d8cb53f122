"""An export graph -> artifact bytes -> verification -> atomic write: the steps that
``bnn-export convert`` and ``bnn_export.export`` share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bnn_export.convert.graph import Graph
from bnn_export.errors import BnnExportError
from bnn_export.fileio import atomic_path
from bnn_export.validate import Validation, count_check, parity_checks


def export_graph(
    graph: Graph, *, fmt: str, target: str, metadata: dict[str, Any]
) -> tuple[bytes, dict[str, Any]]:
    """(artifact bytes, facts: binary op counts, float fallbacks) for ``fmt`` "onnx"
    (``target``: onnxruntime, openvino, reference) or "tflite" (LCE)."""
    if fmt == "onnx":
        from bnn_export.convert.onnx_pipeline import onnx_artifact

        return onnx_artifact(graph, target=target, metadata=metadata)
    if fmt == "tflite":
        from bnn_export.convert.tflite_pipeline import LceServer

        with LceServer() as lce:
            return lce.convert(graph, metadata)
    raise BnnExportError(f"unknown format {fmt!r}; valid: onnx, tflite")


def write_verified(
    output: str | Path,
    artifact: bytes,
    facts: dict[str, Any],
    reference: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
) -> Validation:
    """Check ``artifact`` and write it to ``output`` atomically when every check passes.

    Checks: every binary layer became a binary op (``facts``); with ``reference`` =
    (x, labels, source logits), the file is run on x and compared with the source model
    (top-1 agreement, accuracy drop, max logit difference). Returns the checks; when one
    fails, nothing is written (the caller raises).
    """
    check = Validation()
    count_check(check, facts["binary_op"], facts["binary_layers"], facts["binary_ops"])
    if facts.get("float_fallbacks"):
        check.add(
            "binary layers kept as exact float convs", True, ", ".join(facts["float_fallbacks"])
        )
    try:
        with atomic_path(output) as tmp:
            tmp.write_bytes(artifact)
            if reference is not None:
                from bnn_export.runtime.runners import open_runner

                x, labels, expected = reference
                runner = open_runner(tmp)  # the kind is read from the content
                parity_checks(check, runner.predict(x), expected, labels)
                if "runtime_ops" in runner.info:
                    check.numbers["runtime_ops"] = runner.info["runtime_ops"]
            if not check.ok:
                raise _Failed
    except _Failed:
        pass
    return check


class _Failed(Exception):
    """Leaves ``atomic_path`` without renaming the temp file into place."""
