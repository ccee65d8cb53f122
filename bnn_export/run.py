"""A training run: dataset -> model -> trainer -> run directory (checkpoint + metrics).

PyTorch runs write their directory from the first finished epoch on: ``resume.pt`` (the
resumable state, replaced atomically every epoch), ``metrics.jsonl`` (one line per epoch)
and, with ``--tensorboard``, ``tensorboard/``; at the end ``checkpoint.safetensors`` and
``metrics.json``. A run stopped in between (Ctrl-C, SIGTERM, a crash) keeps the state of
its last finished epoch and continues with ``train --resume DIR``. Larq runs write their
directory once, at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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


def run_info(
    framework: str,
    arch: dict[str, Any],
    binarizer: BinarizerConfig,
    dataset: str,
    settings: TrainSettings,
) -> dict[str, Any]:
    """What a run is (recorded in its resumable state; ``--resume`` rebuilds it from this)."""
    return {
        "framework": framework,
        "arch": arch,
        "binarizer": binarizer.to_dict(),
        "dataset": dataset,
        "settings": asdict(settings) | {"progress": None},
        "bnn_export_version": __version__,
    }


class RunDirectory:
    """Rank 0's writer of a PyTorch run directory while it trains (see the module doc)."""

    def __init__(
        self, output: str | Path, info: dict[str, Any], *, resumed: bool, tensorboard: bool
    ) -> None:
        from bnn_export.train_log import MetricsLog, check_tensorboard

        self.output = Path(output)
        self.info = info
        self.exists = resumed
        self.epochs_done = 0
        self.tensorboard = tensorboard
        self._tb: Any = None
        self._metrics = MetricsLog(self.output)
        if tensorboard:
            check_tensorboard()

    def resumed_from(self, history: list[dict[str, Any]]) -> None:
        """Drop any metrics line written after the state being resumed was saved."""
        self._metrics.truncate(history)
        self.epochs_done = len(history)

    def epoch_end(self, record: dict[str, float], state: Callable[[], dict[str, Any]]) -> None:
        """Save the resumable state and log ``record`` (the history record plus
        ``images_per_second``); the first epoch creates the directory, atomically,
        replacing an older one at that path."""
        from bnn_export.resume import save_state
        from bnn_export.train_log import MetricsLog

        full = state() | {"run": self.info}
        if not self.exists:
            with atomic_dir(self.output) as tmp:
                save_state(tmp, full)
                MetricsLog(tmp).rewrite([record])
            self.exists = True
        else:
            save_state(self.output, full)
            self._metrics.append(record)
        self.epochs_done = int(full["epoch"])
        if self.tensorboard:
            from bnn_export.train_log import TensorBoardLog

            if self._tb is None:
                self._tb = TensorBoardLog(self.output)
            self._tb.append(record)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def interrupted_detail(self, epochs: int) -> str:
        """What a stopped run left, and how to go on."""
        if not self.exists:
            return "stopped before the first epoch finished; no output was written"
        return (
            f"stopped after epoch {self.epochs_done} of {epochs}; {self.output} holds that "
            f"state: continue with `bnn-export train --resume {self.output}`"
        )


def train_run(
    *,
    framework: str,
    arch: dict[str, Any],
    binarizer: BinarizerConfig,
    data: Dataset,
    settings: TrainSettings,
    output: str | Path | None,
    resume: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train and (if ``output``) write the run directory: ``checkpoint.safetensors`` and
    ``metrics.json`` at the end, and for PyTorch the per-epoch ``resume.pt`` and
    ``metrics.jsonl`` as it goes. ``resume``: a state from ``bnn_export.resume.load_state``
    of the run in ``output`` to continue (PyTorch only). On a data-parallel run only rank 0
    writes; every process returns the metrics."""
    data = data.adapted(tuple(arch["kwargs"]["input_shape"]))
    t0 = time.perf_counter()
    preprocessing = getattr(data, "preprocessing", None)
    is_main = True
    if framework == "torch":
        from bnn_export import distributed as dd
        from bnn_export.data_torch import training_data
        from bnn_export.models.torch_build import build_torch_model, layer_bit_ratios, torch_state
        from bnn_export.train_torch import resolve_device, thread_count, train

        info = dd.from_env()
        is_main = info.is_main
        device = resolve_device(settings.device, info)
        tdata = training_data(
            data.spec,
            tuple(arch["kwargs"]["input_shape"]),
            augment=settings.augment,
            seed=settings.seed,
        )
        preprocessing = tdata.preprocessing
        model = build_torch_model(arch, binarizer, seed=settings.seed)
        # metrics record the thread count used, also when it was chosen automatically
        settings = replace(settings, num_threads=thread_count(model, tdata, settings))
        writer: RunDirectory | None = None
        if output is not None and is_main:
            writer = RunDirectory(
                output,
                run_info(framework, arch, binarizer, data.spec, settings),
                resumed=resume is not None,
                tensorboard=settings.tensorboard,
            )
            if resume is not None:
                writer.resumed_from(resume["history"])
        elif settings.tensorboard and output is None:
            raise BnnExportError(
                "--tensorboard writes under the run directory, and no -o was given",
                hint="add -o DIR",
            )
        try:
            with dd.process_group(info, device):
                history = train(
                    model,
                    tdata,
                    settings,
                    resume=resume,
                    on_epoch_end=writer.epoch_end if writer is not None else None,
                    dist_info=info,
                )
        except KeyboardInterrupt as exc:
            if writer is not None:
                exc.bnn_export_detail = writer.interrupted_detail(settings.epochs)  # type: ignore[attr-defined]
            elif output is None:
                exc.bnn_export_detail = "no output was written (no -o given)"  # type: ignore[attr-defined]
            else:
                exc.bnn_export_detail = (  # type: ignore[attr-defined]
                    f"process rank {info.rank} stopped; rank 0 says what {output} holds"
                )
            raise
        finally:
            if writer is not None:
                writer.close()
        test_accuracy = history[-1]["test_accuracy"] if history else 0.0
        tensors = torch_state(model)
        ratios = layer_bit_ratios(model) if binarizer.binary else {}
    elif framework == "larq":
        if resume is not None:
            raise BnnExportError(
                "--resume continues PyTorch runs; Larq runs are not resumable",
                hint="train the Larq model again",
            )
        from bnn_export.models.larq_build import build_larq_model, larq_state
        from bnn_export.models.larq_build import layer_bit_ratios as larq_bit_ratios
        from bnn_export.train_larq import accuracy as larq_accuracy
        from bnn_export.train_larq import model_scope
        from bnn_export.train_larq import train as larq_train

        with model_scope(settings):  # --devices N: mirrored variables
            keras_model = build_larq_model(arch, binarizer, seed=settings.seed)
        history = larq_train(keras_model, data, settings)
        test_accuracy = larq_accuracy(keras_model, data.x_test, data.y_test)
        tensors = larq_state(keras_model)
        ratios = larq_bit_ratios(keras_model) if binarizer.binary else {}
    else:
        raise BnnExportError(f"unknown framework {framework!r}; valid: larq, torch")
    seconds = time.perf_counter() - t0
    if resume is not None:  # the whole run's training time, not just this session's
        seconds += sum(float(r.get("seconds", 0.0)) for r in resume["history"])
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
    if output is not None and is_main:
        ckpt = Checkpoint(
            framework, arch, binarizer, data.spec, tensors, preprocessing=preprocessing
        )
        if framework == "torch":  # the directory exists since the first epoch
            save_checkpoint(Path(output) / CHECKPOINT_NAME, ckpt)
            write_json(Path(output) / METRICS_NAME, metrics)
        else:
            with atomic_dir(output) as tmp:
                save_checkpoint(Path(tmp) / CHECKPOINT_NAME, ckpt)
                write_json(Path(tmp) / METRICS_NAME, metrics)
    return metrics
