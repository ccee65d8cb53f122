"""checkpoint -> .tflite bytes with LCE ops, converted in a child process."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from bnn_export.convert.graph import graph_from_torch
from bnn_export.convert.keras_export import check_tflite_exportable
from bnn_export.convert.source import Source
from bnn_export.errors import BnnExportError

CONVERT_TIMEOUT_S = 1200


def convert_tflite(
    source: Source, *, timeout: float = CONVERT_TIMEOUT_S
) -> tuple[bytes, dict[str, Any]]:
    """(.tflite bytes, facts: LceBconv2d count vs binary layers, float fallbacks)."""
    with tempfile.TemporaryDirectory(prefix="bnn-export-lce-") as tmp:
        job_dir = Path(tmp)
        graph = None
        arrays = None
        if source.model is not None:
            graph = graph_from_torch(source.model, source.input_shape)
            check_tflite_exportable(graph)
            job: dict[str, Any] = {"kind": "graph", "metadata": source.metadata(graph.bit_ratios())}
        else:
            # bit_ratios: the child records those of the model it converts
            job = _checkpoint_job(source.checkpoint_path, source.metadata({}))
            arrays = source.larq_fixed_state
        _write_job(job_dir, job, graph, arrays)
        _run_child(job_dir, timeout)
        return _read_result(job_dir)


def _checkpoint_job(path: str | Path, metadata: dict[str, Any]) -> dict[str, Any]:
    from bnn_export.checkpoint import resolve_checkpoint_path

    return {
        "kind": "checkpoint",
        "checkpoint": str(resolve_checkpoint_path(path).resolve()),
        "metadata": metadata,
    }


def _write_job(
    job_dir: Path, job: dict[str, Any], graph: Any, fixed_state: dict[str, Any] | None = None
) -> None:
    """The files lce_worker reads: job.json and, for a graph job, graph.pkl; for a
    checkpoint job with fixed bit ratios, fixed.npz (``larq_build.fixed_state``)."""
    if graph is not None:
        with (job_dir / "graph.pkl").open("wb") as f:
            pickle.dump(graph, f)
    if fixed_state is not None:
        import numpy as np

        with (job_dir / "fixed.npz").open("wb") as f:
            np.savez(f, **fixed_state)
        job = {**job, "fixed_state": "fixed.npz"}
    (job_dir / "job.json").write_text(json.dumps(job))


def _read_result(job_dir: Path) -> tuple[bytes, dict[str, Any]]:
    """What lce_worker wrote: (.tflite bytes, checked facts)."""
    data = (job_dir / "model.tflite").read_bytes()
    result = json.loads((job_dir / "result.json").read_text())
    return data, _facts(data, result)


def _facts(data: bytes, result: dict[str, Any]) -> dict[str, Any]:
    from bnn_export.inspect_artifact import tflite_op_names

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
    return facts


def _run_child(job_dir: Path, timeout: float) -> None:
    # TensorFlow writes temp files (autograph) that only an orderly exit removes; keep them
    # in the job dir, which the parent deletes even when the child is killed.
    child_tmp = job_dir / "tmp"
    env = _child_env(child_tmp)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bnn_export.convert.lce_worker", str(job_dir)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise BnnExportError(f"the LCE converter did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        how = (
            f"was killed by signal {signal.Signals(-proc.returncode).name}"
            if proc.returncode < 0
            else f"exited with status {proc.returncode}"
        )
        tail = "\n".join(line for line in proc.stderr.strip().splitlines()[-8:])
        raise BnnExportError(
            f"the LCE converter {how}:\n{tail}",
            hint="rerun with --debug; if the model has unusual layers, try --format onnx",
        )


def _child_env(child_tmp: Path) -> dict[str, str]:
    child_tmp.mkdir(exist_ok=True)
    return {
        **os.environ,
        "TF_USE_LEGACY_KERAS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "TMPDIR": str(child_tmp),
    }


class LceServer:
    """One LCE child process converting many export graphs and Larq checkpoints (one
    TensorFlow import).

    ``with LceServer() as lce: data, facts = lce.convert(graph)`` (or
    ``lce.convert_checkpoint(path)`` for a Larq checkpoint). A model the converter
    rejects raises BnnExportError; if the child dies (LCE can abort the process), it is
    restarted for the next job.
    """

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="bnn-export-lce-server-"))
        self._proc: subprocess.Popen[str] | None = None
        self._count = 0

    def __enter__(self) -> LceServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _child(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "bnn_export.convert.lce_worker", "--serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=_child_env(self._dir / "tmp"),
            )
        return self._proc

    def convert(
        self, graph: Any, metadata: dict[str, Any] | None = None
    ) -> tuple[bytes, dict[str, Any]]:
        """An export graph (from ``graph_from_torch``) -> (.tflite bytes, facts)."""
        check_tflite_exportable(graph)
        return self._run({"kind": "graph", "metadata": metadata or {}}, graph)

    def convert_checkpoint(
        self, path: str | Path, metadata: dict[str, Any] | None = None
    ) -> tuple[bytes, dict[str, Any]]:
        """A Larq checkpoint (file or run directory) -> (.tflite bytes, facts), as
        ``convert_tflite`` converts it."""
        return self._run(_checkpoint_job(path, metadata or {}), None)

    def _run(self, job: dict[str, Any], graph: Any) -> tuple[bytes, dict[str, Any]]:
        self._count += 1
        job_dir = self._dir / f"job{self._count}"
        job_dir.mkdir()
        try:
            _write_job(job_dir, job, graph)
            proc = self._child()
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(f"{job_dir}\n")
            proc.stdin.flush()
            answer = proc.stdout.readline().strip()
            if not answer:
                code = proc.wait(timeout=60)
                raise BnnExportError(f"the LCE converter process died (status {code})")
            if answer != "ok":
                raise BnnExportError(f"the LCE converter failed: {answer.removeprefix('error ')}")
            return _read_result(job_dir)
        finally:
            shutil.rmtree(job_dir, ignore_errors=True)

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        shutil.rmtree(self._dir, ignore_errors=True)
