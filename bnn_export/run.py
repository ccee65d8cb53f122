"""A training run: dataset -> model -> trainer -> run directory (checkpoint + metrics)."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bnn_export import __version__
from bnn_export.binarizers import BinarizerConfig
from bnn_export.checkpoint import CHECKPOINT_NAME, Checkpoint, save_checkpoint
from bnn_export.datasets import Dataset
from bnn_export.errors import BnnExportError
from bnn_export.fileio import atomic_dir, write_json
from bnn_export.train_settings import TrainSettings

METRICS_NAME = "metrics.json"


def train_run(
    *,
    framework: str,
    arch: dict[str, Any],
    binarizer: BinarizerConfig,
    data: Dataset,
    settings: TrainSettings,
    output: str | Path | None,
) -> dict[str, Any]:
    """Train and (if ``output``) write ``output/metrics.json`` and the checkpoint atomically."""
    data = data.adapted(tuple(arch["kwargs"]["input_shape"]))
    t0 = time.perf_counter()
    if framework == "torch":
        from bnn_export.models.torch_build import build_torch_model, layer_bit_ratios, torch_state
        from bnn_export.train_torch import accuracy, thread_count, train

        model = build_torch_model(arch, binarizer, seed=settings.seed)
        # metrics record the thread count used, also when it was chosen automatically
        settings = replace(settings, num_threads=thread_count(model, data, settings))
        history = train(model, data, settings)
        test_accuracy = accuracy(model, data.x_test, data.y_test)
        tensors = torch_state(model)
        ratios = layer_bit_ratios(model) if binarizer.binary else {}
    elif framework == "larq":
        from bnn_export.models.larq_build import build_larq_model, larq_state
        from bnn_export.models.larq_build import layer_bit_ratios as larq_bit_ratios
        from bnn_export.train_larq import accuracy as larq_accuracy
        from bnn_export.train_larq import train as larq_train

        keras_model = build_larq_model(arch, binarizer, seed=settings.seed)
        history = larq_train(keras_model, data, settings)
        test_accuracy = larq_accuracy(keras_model, data.x_test, data.y_test)
        tensors = larq_state(keras_model)
        ratios = larq_bit_ratios(keras_model) if binarizer.binary else {}
    else:
        raise BnnExportError(f"unknown framework {framework!r}; valid: larq, torch")
    seconds = time.perf_counter() - t0
    metrics: dict[str, Any] = {
        "test_accuracy": test_accuracy,
        "train_seconds": seconds,
        "epochs": settings.epochs,
        "framework": framework,
        "model": arch["name"],
        "arch": arch,
        "dataset": data.spec,
        "binarizer": binarizer.to_dict(),
        "settings": asdict(settings) | {"progress": None},
        "bit_ratios": ratios,
        "history": history,
        "bnn_export_version": __version__,
    }
    if output is not None:
        ckpt = Checkpoint(framework, arch, binarizer, data.spec, tensors)
        with atomic_dir(output) as tmp:
            save_checkpoint(Path(tmp) / CHECKPOINT_NAME, ckpt)
            write_json(Path(tmp) / METRICS_NAME, metrics)
    return metrics
