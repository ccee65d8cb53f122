"""Accuracy of a model's logits: top-1 on the test split and agreement with a reference.

The evaluation images are the dataset's test split as float32 NCHW in [-1, 1]. A model is
only fed images of its own input shape: the dataset it was trained on is adapted the way
training adapted it (``Dataset.adapted``); any other dataset must already fit, otherwise the
runner's input check refuses it with an error naming both shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnn_export.errors import BnnExportError


@dataclass(frozen=True)
class EvalSet:
    spec: str
    x: np.ndarray  # float32 [N, C, H, W]
    y: np.ndarray  # int64 [N]
    #: how the images were preprocessed (``bnn_export.datasets.Dataset.preprocessing``)
    preprocessing: dict[str, Any] = field(default_factory=dict)


def load_eval_set(
    spec: str, *, input_shape: tuple[int, ...], trained_on: str | None, max_eval: int | None
) -> EvalSet:
    """The test split of ``spec`` for a model of ``input_shape`` (C, H, W), first
    ``max_eval`` (an ``imagefolder`` is rendered at ``input_shape`` and loads only
    ``max_eval`` images, or its default number)."""
    from bnn_export.datasets import load_dataset

    shape = tuple(int(v) for v in input_shape)
    data = load_dataset(
        spec,
        input_shape=shape if len(shape) == 3 else None,  # type: ignore[arg-type]
        max_images=max_eval,
        with_train=False,
    )
    if trained_on is not None and spec.partition(":")[0] == trained_on.partition(":")[0]:
        data = data.adapted(tuple(int(v) for v in input_shape))  # type: ignore[arg-type]
    x, y = data.x_test, data.y_test
    if max_eval is not None:
        x, y = x[:max_eval], y[:max_eval]
    return EvalSet(
        data.spec, np.ascontiguousarray(x, dtype=np.float32), y, dict(data.preprocessing)
    )


def top1(logits_or_predictions: np.ndarray) -> np.ndarray:
    arr = np.asarray(logits_or_predictions)
    return arr.argmax(axis=1) if arr.ndim == 2 else arr.astype(np.int64)


def score(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    reference: np.ndarray | None = None,
) -> dict[str, Any]:
    """top1 accuracy, and agreement / max abs logit difference with ``reference`` logits."""
    logits = np.asarray(logits)
    if logits.ndim != 2 or len(logits) != len(labels):
        raise BnnExportError(
            f"the model returned outputs of shape {logits.shape} for {len(labels)} images; "
            "expected [images, classes]",
            hint="bench models exported by `bnn-export convert` (one logits output)",
        )
    predicted = top1(logits)
    result: dict[str, Any] = {
        "samples": int(len(labels)),
        "top1": float((predicted == labels).mean()) if len(labels) else None,
        "agreement": None,
        "max_abs_logit_diff": None,
    }
    if reference is not None:
        if reference.shape != logits.shape:
            raise BnnExportError(
                f"the model's outputs {logits.shape} and the reference's {reference.shape} "
                "differ in shape",
                hint="pass the run directory this artifact was converted from as --reference",
            )
        result["agreement"] = float((predicted == top1(reference)).mean())
        result["max_abs_logit_diff"] = float(np.abs(logits - reference).max())
    return result
