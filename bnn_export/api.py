"""The public Python API: put your own PyTorch network through binarize -> train -> export.

::

    import bnn_export

    bnn_export.binarize_(model, "ste")            # nn.Conv2d / nn.Linear -> binary layers
    for epoch in range(epochs):
        bnn_export.step_schedule(model, epoch, epochs)
        ...                                        # your own training loop
    report = bnn_export.export(model, "m.tflite", input_shape=(3, 32, 32),
                               validation=(x_val, y_val))
    logits = bnn_export.load("m.tflite").predict(x_val)

Every name here is re-exported by ``bnn_export``; the CLI is built on the same pieces.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bnn_export.binarizers import BinarizerConfig
from bnn_export.binarizers import get as get_binarizer
from bnn_export.binarizers import torch_impl as bz
from bnn_export.bitratio import LayerRatio, fix_bit_ratios
from bnn_export.errors import BnnExportError
from bnn_export.models.layers import BinaryConv2d, BinaryLinear

FilterFn = Callable[[nn.Module, str], bool]

__all__ = [
    "ExportError",
    "ExportReport",
    "Predictor",
    "binarize_",
    "export",
    "fix_bit_ratios_",
    "load",
    "step_schedule",
]


# --- binarize_ ---------------------------------------------------------------------------


def _default_filter(model: nn.Module) -> FilterFn:
    """Every conv and linear layer but the first conv and the last linear layer (the
    stem and the classifier stay in full precision, as in every BNN paper)."""
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    keep = {*convs[:1], *linears[-1:]}
    return lambda module, fqn: fqn not in keep


def _binary_twin(
    module: nn.Module, fqn: str, config: BinarizerConfig, pad_value: float
) -> nn.Module:
    """The binary layer computing ``module`` with binarized weights and inputs."""
    if module.bias is not None:  # type: ignore[union-attr]
        raise BnnExportError(
            f"layer {fqn!r} ({type(module).__name__}) has a bias; binary layers have none",
            hint="build it with bias=False (a following BatchNorm absorbs the bias), or leave "
            "it in full precision with filter_fn",
        )
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise BnnExportError(
                f"conv {fqn!r} uses padding={module.padding!r}, padding_mode="
                f"{module.padding_mode!r}; binary convs take explicit integer zero padding",
                hint="write the padding as integers (e.g. padding=1 for a 3x3 'same' conv)",
            )
        twin: nn.Module = BinaryConv2d(
            module.in_channels,
            module.out_channels,
            module.kernel_size,  # type: ignore[arg-type]
            binarizer=config,
            stride=module.stride,  # type: ignore[arg-type]
            padding=module.padding,  # type: ignore[arg-type]
            dilation=module.dilation,  # type: ignore[arg-type]
            groups=module.groups,
            pad_value=pad_value,
        )
    else:
        twin = BinaryLinear(module.in_features, module.out_features, binarizer=config)  # type: ignore[arg-type]
    weight = module.weight  # type: ignore[union-attr]
    with torch.no_grad():
        twin.weight.copy_(weight.detach())  # type: ignore[operator]
    return twin.to(device=weight.device, dtype=weight.dtype)  # type: ignore[union-attr]


def binarize_(
    model: nn.Module,
    binarizer: str | BinarizerConfig | dict[str, Any],
    *,
    filter_fn: FilterFn | None = None,
    pad_value: float = 1.0,
) -> nn.Module:
    """Swap ``nn.Conv2d`` / ``nn.Linear`` layers of ``model`` for ``BinaryConv2d`` /
    ``BinaryLinear`` in place (weights copied), like torchao's ``quantize_``.

    Args:
        model: any PyTorch module; changed in place and returned.
        binarizer: a registry name (``bnn_export.binarizers()``), a ``BinarizerConfig``,
            or a dict with ``name`` and the binarizer's parameters.
        filter_fn: ``filter_fn(module, fqn) -> bool`` picks the layers to binarize among
            the model's ``nn.Conv2d`` and ``nn.Linear`` layers. Default: all but the
            first conv and the last linear layer, which stay in full precision.
        pad_value: what a binary conv pads its binarized input with: ``1.0`` (+1, what
            LCE's fast kernels want) or ``0.0`` (zero padding, a float conv's semantics).

    Returns:
        ``model``.

    Raises:
        BnnExportError: nothing to binarize, a layer with a bias or string padding, or a
            bad binarizer / pad value.
    """
    config = get_binarizer(binarizer)
    if not config.binary:
        raise BnnExportError(
            "binarizer 'none' is the float baseline; binarize_ needs a binary one",
            hint=f"pick one of {', '.join(n for n in bz.WEIGHT_QUANTIZERS if n != 'none')}",
        )
    if pad_value not in (0.0, 1.0):
        raise BnnExportError(f"pad_value must be 0.0 or 1.0, got {pad_value!r}")
    keep = filter_fn or _default_filter(model)
    chosen = [
        (fqn, m)
        for fqn, m in model.named_modules()
        if type(m) in (nn.Conv2d, nn.Linear) and keep(m, fqn)
    ]
    if not chosen:
        raise BnnExportError(
            f"{type(model).__name__} has nothing to binarize: no nn.Conv2d or nn.Linear layer "
            + ("passes filter_fn" if filter_fn else "besides the first conv and the last linear"),
            hint="binarize_ swaps nn.Conv2d / nn.Linear layers; pass a filter_fn that selects some",
        )
    for fqn, module in chosen:
        parent_name, _, child = fqn.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        twin = _binary_twin(module, fqn, config, pad_value)
        twin.train(module.training)
        setattr(parent, child, twin)
    return model


# --- schedules and bit ratios ------------------------------------------------------------


def _scheduled(module: nn.Module) -> bool:
    """Whether a quantizer's forward depends on the epoch (it overrides set_schedule)."""
    for base in (bz.WeightQuantizer, bz.ActivationQuantizer):
        if isinstance(module, base):
            return type(module).set_schedule is not base.set_schedule
    return False


def step_schedule(model: nn.Module, epoch: int, epochs: int) -> None:
    """Drive every binarizer schedule of ``model`` (IR-Net/SD-BNN's EDE, GWT's slope, ...):
    call it once at the start of each epoch, ``epoch`` counting from 0 to ``epochs - 1``.

    Harmless for binarizers without a schedule. ``export`` warns about any layer whose
    binarizer has a schedule that was never stepped.
    """
    if not 0 <= epoch < max(epochs, 1):
        raise BnnExportError(f"epoch must be in [0, {epochs}), got {epoch}")
    bz.step_schedule(model, epoch, epochs)


def unstepped_layers(model: nn.Module) -> list[str]:
    """Names of the layers whose binarizer has a schedule never stepped (``step_schedule``)."""
    names = [
        name.rpartition(".")[0]
        for name, module in model.named_modules()
        if _scheduled(module) and not getattr(module, "schedule_stepped", False)
    ]
    return list(dict.fromkeys(names))


def fix_bit_ratios_(
    model: nn.Module, ratio: float, *, granularity: str = "channel"
) -> dict[str, LayerRatio]:
    """Fix the ratio of +1 weights of every binary layer to ``ratio`` by optimal-transport
    sorting (Equal Bits), in place: each output channel (``granularity="channel"``) or
    whole layer (``"layer"``) gets exactly round(ratio * n) +1 weights, those with the
    largest binarizer scores. The bits are frozen; re-estimate batch norm afterwards
    (``export(..., calibration=x)`` does it).

    Returns:
        Per layer, what was achieved (verified: every channel holds the expected count).

    Raises:
        BnnExportError: a ratio some layer cannot meet (naming it), pruned weights, or a
            model with no binary layer.
    """
    return fix_bit_ratios(model, ratio, granularity)


# --- export and load ---------------------------------------------------------------------


class ExportError(BnnExportError):
    """Export verification failed; nothing was written. ``report`` says what failed."""

    def __init__(self, message: str, report: ExportReport) -> None:
        super().__init__(message, hint="pass validation=None to skip the checks")
        self.report = report


@dataclass
class ExportReport:
    """What ``export`` wrote and checked."""

    path: str
    format: str  # "tflite" or "onnx"
    target: str  # "lce", or the ONNX target
    bytes: int
    binary_op: str  # the op binary layers became
    binary_layers: int  # binary layers expected to become binary ops
    binary_ops: int  # binary ops found in the file
    float_fallbacks: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)  # agreement, accuracy, ...

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


class Predictor:
    """A loaded artifact: ``predict(x)`` takes the NCHW float32 batch the PyTorch model
    takes (whatever the file's own layout) and returns logits."""

    def __init__(self, runner: Any) -> None:
        self._runner = runner
        self.runtime: str = runner.name
        self.input_shape: tuple[int, ...] = tuple(runner.input_shape)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits ``[N, classes]`` for ``x`` of shape ``[N, C, H, W]`` (float32)."""
        return np.asarray(self._runner.predict(np.ascontiguousarray(x, dtype=np.float32)))

    def __repr__(self) -> str:
        return f"Predictor(runtime={self.runtime!r}, input_shape={self.input_shape})"


def load(path: str | Path, *, runtime: str | None = None, num_threads: int = 1) -> Predictor:
    """Open a ``.tflite`` (LCE interpreter), an ``.onnx`` (onnxruntime with bnn-export's
    ops, or OpenVINO for the openvino target) or a run directory / checkpoint (PyTorch).

    ``runtime`` overrides the choice (``"onnxruntime"``, ``"openvino"``, ``"lce"``,
    ``"torch"``).
    """
    from bnn_export.runtime.runners import open_runner

    return Predictor(open_runner(path, runtime=runtime or "auto", num_threads=num_threads))


def export(
    model: nn.Module,
    path: str | Path,
    *,
    input_shape: tuple[int, int, int],
    target: str = "onnxruntime",
    calibration: np.ndarray | None = None,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> ExportReport:
    """Export ``model`` to ``path``: ``.tflite`` (LCE, ``LceBconv2d`` ops) or ``.onnx``
    (``target``: ``"onnxruntime"`` with bnn-export's ``BinaryConv2d`` op, ``"openvino"``,
    or ``"reference"``: standard ONNX ops only).

    Args:
        input_shape: ``(C, H, W)`` of one input.
        calibration: NCHW float32 images; batch-norm statistics are re-estimated on them
            first (e.g. after ``fix_bit_ratios_``). The model is changed in place.
        validation: ``(x, y)``, NCHW float32 images and integer labels: the file is run
            and checked as ``bnn-export convert`` checks it (every binary layer a binary
            op, top-1 agreement >= 99.5% with ``model``, accuracy drop <= 0.5 points).

    Returns:
        The ``ExportReport`` (binary op counts, checks, agreement, accuracy).

    Raises:
        ExportError: a check failed; nothing is written and ``.report`` says what.
        BnnExportError: an unsupported layer (named) or bad arguments.
    """
    from bnn_export.convert.export_flow import export_graph, write_verified
    from bnn_export.convert.graph import graph_from_torch
    from bnn_export.models.evaluation import predict, recalibrate_batchnorm

    out = Path(path)
    fmt = {".tflite": "tflite", ".onnx": "onnx"}.get(out.suffix)
    if fmt is None:
        raise BnnExportError(
            f"cannot tell the format of {str(out)!r} from its suffix",
            hint="name the file *.tflite (LCE) or *.onnx",
        )
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3:
        raise BnnExportError(f"input_shape must be (C, H, W), got {input_shape!r}")
    if unstepped := unstepped_layers(model):
        warnings.warn(
            f"layers {', '.join(unstepped)}: their binarizer has a schedule that was never "
            "stepped; call bnn_export.step_schedule(model, epoch, epochs) at the start of "
            "every epoch",
            stacklevel=2,
        )
    if calibration is not None:
        recalibrate_batchnorm(model, np.ascontiguousarray(calibration, dtype=np.float32))
    model.eval()
    graph = graph_from_torch(model, shape)  # type: ignore[arg-type]
    metadata = {
        "source_framework": "torch",
        "arch": {"name": type(model).__name__},
        "bit_ratios": graph.bit_ratios(),
    }
    artifact, facts = export_graph(graph, fmt=fmt, target=target, metadata=metadata)
    reference = None
    if validation is not None:
        x, y = validation
        x = np.ascontiguousarray(x, dtype=np.float32)
        reference = (x, np.asarray(y), predict(model, x))
    check = write_verified(out, artifact, facts, reference)
    report = ExportReport(
        path=str(out),
        format=fmt,
        target=target if fmt == "onnx" else "lce",
        bytes=out.stat().st_size if check.ok else 0,
        binary_op=facts["binary_op"],
        binary_layers=facts["binary_layers"],
        binary_ops=facts["binary_ops"],
        float_fallbacks=list(facts.get("float_fallbacks", [])),
        checks=[c.__dict__ for c in check.checks],
        numbers=dict(check.numbers),
    )
    if not check.ok:
        raise ExportError(
            f"the exported model failed verification; nothing was written:\n{check.checklist()}",
            report,
        )
    return report
