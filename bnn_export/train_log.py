"""Per-epoch history records and progress lines shared by both trainers."""

from __future__ import annotations

from tqdm import tqdm


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
) -> dict[str, float]:
    """The history entry of one epoch (1-based ``epoch`` in the record); prints it if asked."""
    record = {
        "epoch": epoch + 1,
        "loss": total_loss / samples,
        "train_accuracy": correct / samples,
        "test_accuracy": test_accuracy,
        "seconds": seconds,
    }
    if progress:
        tqdm.write(
            f"epoch {epoch + 1}/{epochs}: loss {record['loss']:.4f} train {record['train_accuracy']:.2%} "
            f"test {test_accuracy:.2%} ({seconds:.1f}s)"
        )
    return record
