"""The model a conversion starts from: a checkpoint, optionally with bit ratios fixed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from bnn_export import __version__
from bnn_export.checkpoint import Checkpoint, load_checkpoint
from bnn_export.errors import BnnExportError


@dataclass
class Source:
    checkpoint: Checkpoint
    checkpoint_path: str
    model: nn.Module | None  # the PyTorch model (None for larq checkpoints)
    bit_ratio_fix: dict[str, Any] | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    #: A Larq checkpoint's model when it was changed here (bit ratios fixed, batch norms
    #: re-estimated): what the converted file must compute. None: the checkpoint as is.
    larq_model: Any = None
    #: What the LCE child applies to the checkpoint's model to get ``larq_model``: fixed
    #: bits and scales (``<layer>/bits|scale``) and batch-norm moving statistics
    #: (``<layer>/moving_mean|moving_variance``), for ``larq_build.apply_fixed_state``.
    larq_fixed_state: dict[str, np.ndarray] | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.checkpoint.arch["kwargs"]["input_shape"]
        return int(c), int(h), int(w)

    def metadata(self, bit_ratios: dict[str, Any]) -> dict[str, Any]:
        """What every exported file records about its origin."""
        ck = self.checkpoint
        return {
            "bnn_export_version": __version__,
            "source_framework": ck.framework,
            "arch": ck.arch,
            "binarizer": ck.binarizer.to_dict(),
            "dataset": ck.dataset,
            "preprocessing": ck.preprocessing,
            "bit_ratios": bit_ratios,
            "bit_ratio_fix": self.bit_ratio_fix,
        }


def load_source(
    path: str | Path,
    *,
    bit_ratio: float | None = None,
    granularity: str = "channel",
    recalibrate_on: Any = None,
) -> Source:
    """Load a checkpoint; with ``bit_ratio`` re-derive every binary layer's bits by OT
    sorting (verified per layer) and, given data (``recalibrate_on``: NCHW float32 array),
    re-estimate batch-norm statistics for the fixed bits. PyTorch and Larq checkpoints
    alike (one sort and check: ``bitratio.fix_layers``)."""
    ckpt = load_checkpoint(path)
    if not ckpt.binarizer.binary and bit_ratio is not None:
        raise BnnExportError("--bit-ratio applies to binary models; this one is float ('none')")
    if ckpt.framework != "torch":
        source = Source(ckpt, str(path), None)
        if bit_ratio is not None:
            _fix_larq(source, bit_ratio, granularity, recalibrate_on)
        return source
    from bnn_export.models.torch_build import torch_model_from_checkpoint

    model = torch_model_from_checkpoint(ckpt)
    source = Source(ckpt, str(path), model)
    if bit_ratio is not None:
        from bnn_export.bitratio import fix_bit_ratios

        report = fix_bit_ratios(model, bit_ratio, granularity)
        recalibrated = False
        if recalibrate_on is not None:
            from bnn_export.models.evaluation import recalibrate_batchnorm

            recalibrate_batchnorm(model, recalibrate_on)
            recalibrated = True
        source.bit_ratio_fix = _fix_record(bit_ratio, granularity, recalibrated, report)
    return source


def _fix_larq(source: Source, bit_ratio: float, granularity: str, recalibrate_on: Any) -> None:
    from bnn_export.models import larq_build

    model = larq_build.larq_model_from_checkpoint(source.checkpoint)
    report = larq_build.fix_bit_ratios(model, bit_ratio, granularity)
    if recalibrate_on is not None:
        larq_build.recalibrate_batchnorm(model, recalibrate_on)
    source.larq_model = model
    source.larq_fixed_state = larq_build.fixed_state(model)
    source.bit_ratio_fix = _fix_record(bit_ratio, granularity, recalibrate_on is not None, report)


def _fix_record(
    bit_ratio: float, granularity: str, recalibrated: bool, report: dict[str, Any]
) -> dict[str, Any]:
    return {
        "target": bit_ratio,
        "granularity": granularity,
        "verified": True,
        "batchnorm_reestimated": recalibrated,
        "layers": {k: v.to_dict() for k, v in report.items()},
    }
