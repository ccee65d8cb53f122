"""The convert command's flow: source -> artifact bytes -> verification -> atomic write."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bnn_export.binarizers import check_bit_ratio
from bnn_export.bitratio import GRANULARITIES
from bnn_export.errors import BnnExportError, unknown_name
from bnn_export.fileio import check_writable

FORMATS = ("tflite", "onnx")


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def run_convert(
    source_path: str,
    *,
    fmt: str,
    output: str,
    target: str | None = None,
    bit_ratio: float | None = None,
    granularity: str | None = None,
    recalibrate_bn: bool | None = None,
    validate: bool = True,
    dataset: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Convert a checkpoint. ``target``, ``granularity`` and ``recalibrate_bn``: None =
    not given (onnxruntime, channel, re-estimate); an option the conversion would not
    apply is refused, never ignored."""
    from bnn_export.convert.onnx_export import TARGETS
    from bnn_export.convert.source import load_source
    from bnn_export.datasets import load_dataset

    if fmt not in FORMATS:
        raise unknown_name("format", fmt, FORMATS)
    check_options_apply(
        fmt=fmt,
        target=target,
        bit_ratio=bit_ratio,
        granularity=granularity,
        recalibrate_bn=recalibrate_bn,
        validate=validate,
        dataset=dataset,
    )
    target = target or "onnxruntime"
    granularity = granularity or "channel"
    recalibrate = recalibrate_bn is not False
    if fmt == "onnx" and target not in TARGETS:
        raise BnnExportError(
            f"Expected `target` to be one of {', '.join(TARGETS)}, but got {target!r}"
        )
    if bit_ratio is not None:
        check_bit_ratio(bit_ratio)
    if granularity not in GRANULARITIES:
        raise unknown_name("OT granularity", granularity, GRANULARITIES)
    check_writable(output)
    from bnn_export.checkpoint import load_checkpoint

    ckpt = load_checkpoint(source_path)
    if fmt == "onnx" and ckpt.framework == "larq":
        raise BnnExportError(
            "a Larq checkpoint converts to .tflite only (LCE); --format onnx exports PyTorch "
            "checkpoints",
            hint="use --format tflite, or train with --framework torch for an .onnx file",
        )
    data = None
    if validate or (bit_ratio is not None and recalibrate):
        c, h, w = (int(v) for v in ckpt.arch["kwargs"]["input_shape"])
        data = load_dataset(
            dataset or ckpt.dataset,
            input_shape=(c, h, w),
            with_train=bit_ratio is not None and recalibrate,  # batch-norm re-estimation
        ).adapted((c, h, w))
        check_preprocessing(ckpt.preprocessing, ckpt.dataset, data.spec, data.preprocessing)
    if bit_ratio is not None and recalibrate and data is not None:
        _log(progress, f"fixing bit ratios, re-estimating batch norm on {data.spec}...")
    source = load_source(
        source_path,
        bit_ratio=bit_ratio,
        granularity=granularity,
        recalibrate_on=(
            data.x_train if (data is not None and bit_ratio is not None and recalibrate) else None
        ),
    )
    where = f" ({target})" if fmt == "onnx" else ""
    _log(
        progress,
        f"converting {source_path} ({ckpt.arch['name']}, {ckpt.binarizer.name}, "
        f"{ckpt.framework}) to {fmt}{where}...",
    )
    if fmt == "onnx":
        from bnn_export.convert.onnx_pipeline import convert_onnx

        artifact, facts = convert_onnx(source, target=target)
    else:
        from bnn_export.convert.tflite_pipeline import convert_tflite

        artifact, facts = convert_tflite(source)
    reference = None
    if validate and data is not None:
        _log(progress, f"validating on the {data.spec} test split ({len(data.y_test)} images)...")
        reference = (data.x_test, data.y_test, _reference_logits(source, data.x_test))
    from bnn_export.convert.export_flow import write_verified

    check = write_verified(output, artifact, facts, reference)
    if not check.ok:
        raise BnnExportError(
            "the converted model failed verification; nothing was written:\n" + check.checklist(),
            hint="rerun with --debug, or --no-validate to keep an unverified file",
        )
    size = Path(output).stat().st_size
    summary = "\n".join([check.checklist(), f"wrote {output} ({size:,} bytes)"])
    return {
        "output": output,
        "format": fmt,
        "target": target if fmt == "onnx" else "lce",
        "bytes": size,
        "facts": facts,
        "validation": check.to_dict(),
        "bit_ratio_fix": source.bit_ratio_fix,
        "summary": summary,
    }


def check_options_apply(
    *,
    fmt: str,
    target: str | None,
    bit_ratio: float | None,
    granularity: str | None,
    recalibrate_bn: bool | None,
    validate: bool,
    dataset: str | None,
) -> None:
    """Refuse options this conversion would not apply (None: not given)."""
    if target is not None and fmt != "onnx":
        raise BnnExportError(
            f"--target {target} applies to --format onnx; a .tflite file always targets LCE",
            hint="drop --target",
        )
    if bit_ratio is None:
        for given, option in (
            (granularity is not None, f"--ot-granularity {granularity}"),
            (recalibrate_bn is not None, "--recalibrate-bn/--no-recalibrate-bn"),
        ):
            if given:
                raise BnnExportError(
                    f"{option} applies to bit-ratio fixing, and no --bit-ratio was given",
                    hint="add --bit-ratio P, or drop the option",
                )
    uses_data = validate or (bit_ratio is not None and recalibrate_bn is not False)
    if dataset is not None and not uses_data:
        raise BnnExportError(
            f"--dataset {dataset} is for validation (and batch-norm re-estimation), and "
            "--no-validate turns validation off",
            hint="drop --dataset, or drop --no-validate",
        )


def check_preprocessing(
    recorded: dict[str, Any] | None, trained_on: str, spec: str, loaded: dict[str, Any]
) -> None:
    """Refuse to validate on images preprocessed otherwise than the checkpoint records
    (``recorded``); a checkpoint from before preprocessing was recorded gets a warning."""
    from bnn_export.datasets import legacy_preprocessing, preprocessing_mismatch

    mismatch = preprocessing_mismatch(recorded or legacy_preprocessing(), loaded)
    if mismatch is None:
        return
    if recorded is None:
        print(
            f"warning: this checkpoint records no preprocessing (written before bnn-export "
            f"recorded it), so it was trained on {trained_on} scaled to [-1, 1]; the {spec} "
            "images are now preprocessed otherwise, so the accuracy measured may be low "
            "(the parity checks still hold)",
            file=sys.stderr,
            flush=True,
        )
        return
    raise BnnExportError(
        f"{mismatch}; validating on {spec} would not test the model on what it was trained on",
        hint="pass --dataset with the model's training preprocessing, or --no-validate",
    )


def _reference_logits(source: Any, x: Any) -> Any:
    """What the converted file must compute: the (fixed) PyTorch model, the fixed Larq
    model, or the Larq checkpoint as it is."""
    if source.model is not None:
        from bnn_export.models.evaluation import predict

        return predict(source.model, x)
    from bnn_export.models import larq_build

    model = source.larq_model
    if model is None:
        model = larq_build.larq_model_from_checkpoint(source.checkpoint)
    return larq_build.predict(model, x)
