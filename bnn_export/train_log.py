"""Per-epoch history records and progress lines shared by both trainers, and the run
directory's live logs: ``metrics.jsonl`` (one JSON line per epoch, flushed as the run
goes) and optional TensorBoard event files."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bnn_export.errors import BnnExportError
from bnn_export.fileio import write_text

METRICS_JSONL = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def epoch_steps(epoch: int, epochs: int, steps: int, *, progress: bool) -> tqdm:
    """The steps of one epoch, with a progress bar (loss as postfix) unless ``progress`` is off."""
    return tqdm(
        range(steps),
        desc=f"epoch {epoch + 1}/{epochs}",
        unit="step",
        leave=False,
        disable=not progress,
    )


def epoch_record(
    epoch: int,
    epochs: int,
    *,
    total_loss: float,
    correct: int,
    samples: int,
    test_accuracy: float,
    seconds: float,
    progress: bool,
    lr: float | None = None,
) -> dict[str, float]:
    """The history entry of one epoch (1-based ``epoch`` in the record); prints it if asked.
    ``lr``: the learning rate at the end of the epoch, recorded if given. Only ``seconds``
    depends on timing (runs with the same seed have equal histories otherwise)."""
    record = {
        "epoch": epoch + 1,
        "loss": total_loss / samples,
        "train_accuracy": correct / samples,
        "test_accuracy": test_accuracy,
        "seconds": seconds,
    }
    if lr is not None:
        record["lr"] = lr
    if progress:
        tqdm.write(
            f"epoch {epoch + 1}/{epochs}: loss {record['loss']:.4f} train {record['train_accuracy']:.2%} "
            f"test {test_accuracy:.2%} ({seconds:.1f}s)"
        )
    return record


class MetricsLog:
    """``DIR/metrics.jsonl``: one line per finished epoch, appended and flushed to disk
    at once, so a run that is stopped keeps the lines of its finished epochs."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / METRICS_JSONL

    def rewrite(self, history: list[dict[str, Any]]) -> None:
        """Replace the file (atomically) with ``history``."""
        write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in history))

    def truncate(self, history: list[dict[str, Any]]) -> None:
        """Keep the lines of the epochs ``history`` holds (a resumed state's: a line
        written after the state was saved is dropped); lines that cannot be read are
        replaced by ``history``'s records."""
        lines: dict[int, dict[str, Any]] = {}
        try:
            for text in self.path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    line = json.loads(text)
                    lines[int(line["epoch"])] = line
        except OSError:
            pass
        self.rewrite([lines.get(int(r["epoch"]), r) for r in history])

    def append(self, record: dict[str, Any]) -> None:
        """Add one epoch's line and flush it to disk."""
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise BnnExportError(
                f"could not write {str(self.path)!r}: {exc.strerror or exc}",
                hint="check free disk space and permissions of the output path",
            ) from None


def check_tensorboard() -> None:
    """Fail before training when ``--tensorboard`` cannot work."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise BnnExportError(
            "--tensorboard needs the `tensorboard` package, which is not installed",
            hint="pip install tensorboard (or drop --tensorboard; DIR/metrics.jsonl has the "
            "same numbers)",
        ) from None


class TensorBoardLog:
    """Scalars of every epoch under ``DIR/tensorboard`` (one event file per session;
    a resumed run adds a new one, continuing the epoch numbers)."""

    def __init__(self, directory: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(directory) / TENSORBOARD_DIR))

    def append(self, record: dict[str, Any]) -> None:
        step = int(record["epoch"])
        for key, value in record.items():
            if key != "epoch" and isinstance(value, int | float):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
