"""The ``model`` section of a bench row: what was measured, read from the file itself."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnn_export.bench import macs


@dataclass(frozen=True)
class ModelFile:
    """An artifact or checkpoint given on the command line."""

    path: Path
    kind: str  # "tflite", "onnx" or "checkpoint"
    file: Path  # the file hashed and sized (the checkpoint inside a run dir)
    data: bytes | None  # artifact bytes (None for checkpoints)

    @property
    def label(self) -> str:
        return self.path.name or str(self.path)


def open_model_file(path: str | Path) -> ModelFile:
    """Classify and read ``path``: a .tflite/.onnx artifact, or a run dir / checkpoint."""
    from bnn_export.artifacts import read_artifact
    from bnn_export.checkpoint import resolve_checkpoint_path

    p = Path(path)
    if p.is_dir() or p.suffix == ".safetensors":
        return ModelFile(p, "checkpoint", resolve_checkpoint_path(p), None)
    kind, data = read_artifact(p)
    return ModelFile(p, kind, p, data)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact_metadata(model: ModelFile) -> dict[str, Any]:
    """bnn-export's metadata in an artifact ({} when it has none, e.g. a foreign file)."""
    if model.data is None:
        return {}
    if model.kind == "onnx":
        from bnn_export.inspect_artifact import inspect_onnx

        return dict(inspect_onnx(model.data)["metadata"])
    from bnn_export.inspect_artifact import tflite_metadata

    return tflite_metadata(model.data)


def checkpoint_facts(model: ModelFile) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata like an artifact's, counts) of a checkpoint, via its export graph."""
    from bnn_export.checkpoint import load_checkpoint

    ckpt = load_checkpoint(model.file)
    meta: dict[str, Any] = {
        "arch": ckpt.arch,
        "binarizer": ckpt.binarizer.to_dict(),
        "dataset": ckpt.dataset,
        "preprocessing": ckpt.preprocessing,
        "source_framework": ckpt.framework,
        "bit_ratios": None,
    }
    if ckpt.framework != "torch":
        return meta, {}
    from bnn_export.convert.graph import graph_from_torch
    from bnn_export.models.torch_build import torch_model_from_checkpoint

    c, h, w = ckpt.arch["kwargs"]["input_shape"]
    graph = graph_from_torch(torch_model_from_checkpoint(ckpt), (int(c), int(h), int(w)))
    meta["bit_ratios"] = graph.bit_ratios()
    return meta, macs.count_graph(graph)


def model_record(model: ModelFile) -> dict[str, Any]:
    """path, sha256, format, bytes, target, binarizer, bit ratios, dataset, params and MACs."""
    if model.kind == "checkpoint":
        meta, counts = checkpoint_facts(model)
    else:
        assert model.data is not None  # artifacts always carry their bytes
        meta = artifact_metadata(model)
        counts = (
            macs.count_onnx(model.data) if model.kind == "onnx" else macs.count_tflite(model.data)
        )
    binarizer = meta.get("binarizer")
    return {
        "path": str(model.path),
        "name": model.label,
        "sha256": _sha256(model.file),
        "format": model.kind,
        "bytes": model.file.stat().st_size,
        "target": meta.get("bnn_export_target") or ("lce" if model.kind == "tflite" else None),
        "binarizer": binarizer.get("name") if isinstance(binarizer, dict) else binarizer,
        "binarizer_params": binarizer.get("params") if isinstance(binarizer, dict) else None,
        "bit_ratios": meta.get("bit_ratios"),
        "trained_on": meta.get("dataset"),
        "preprocessing": meta.get("preprocessing"),
        "input_shape": (meta.get("arch") or {}).get("kwargs", {}).get("input_shape"),
        "binary_params": counts.get("binary_params"),
        "float_params": counts.get("float_params"),
        "binary_macs": counts.get("binary_macs"),
        "float_macs": counts.get("float_macs"),
        "layers": counts.get("layers"),
    }


def input_shape_of(model: ModelFile) -> tuple[int, int, int] | None:
    """The model's input (C, H, W), read from the file (None when not static)."""
    if model.kind == "checkpoint":
        from bnn_export.checkpoint import load_checkpoint

        c, h, w = load_checkpoint(model.file).arch["kwargs"]["input_shape"]
        return int(c), int(h), int(w)
    assert model.data is not None
    if model.kind == "onnx":
        import onnx

        graph = onnx.load_from_string(model.data).graph
        inits = {t.name for t in graph.initializer}
        first = next(v for v in graph.input if v.name not in inits)
        dims = [d.dim_value for d in first.type.tensor_type.shape.dim][1:]
    else:
        import tflite

        sub = tflite.Model.GetRootAsModel(model.data, 0).Subgraphs(0)
        h, w, c = (int(d) for d in sub.Tensors(sub.Inputs(0)).ShapeAsNumpy()[1:])
        dims = [c, h, w]
    if len(dims) != 3 or not all(d > 0 for d in dims):
        return None
    return int(dims[0]), int(dims[1]), int(dims[2])
