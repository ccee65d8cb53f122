"""The convert command's flow: source -> artifact bytes -> verification -> atomic write."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bnn_export.binarizers import check_bit_ratio
from bnn_export.bitratio import GRANULARITIES
from bnn_export.errors import BnnExportError, unknown_name
from bnn_export.fileio import atomic_path, check_writable
from bnn_export.validate import Validation, count_check, parity_checks

FORMATS = ("tflite", "onnx")


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def run_convert(
    source_path: str,
    *,
    fmt: str,
    output: str,
    target: str,
    bit_ratio: float | None,
    granularity: str,
    recalibrate_bn: bool,
    validate: bool,
    dataset: str | None,
    progress: bool,
) -> dict[str, Any]:
    from bnn_export.convert.onnx_export import TARGETS
    from bnn_export.convert.source import load_source
    from bnn_export.datasets import load_dataset

    if fmt not in FORMATS:
        raise unknown_name("format", fmt, FORMATS)
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
    data = None
    if validate or (bit_ratio is not None and recalibrate_bn):
        data = load_dataset(dataset or ckpt.dataset).adapted(
            tuple(ckpt.arch["kwargs"]["input_shape"])
        )
    source = load_source(
        source_path, bit_ratio=bit_ratio, granularity=granularity,
        recalibrate_on=data.x_train if (data is not None and bit_ratio is not None and recalibrate_bn) else None,
    )  # fmt: skip
    _log(progress, f"converting {source_path} ({ckpt.arch['name']}, {ckpt.binarizer.name}, "
                   f"{ckpt.framework}) to {fmt}{' (' + target + ')' if fmt == 'onnx' else ''}...")  # fmt: skip
    if fmt == "onnx":
        from bnn_export.convert.onnx_pipeline import convert_onnx

        artifact, facts = convert_onnx(source, target=target)
    else:
        from bnn_export.convert.tflite_pipeline import convert_tflite

        artifact, facts = convert_tflite(source)
    check = Validation()
    count_check(check, facts["binary_op"], facts["binary_layers"], facts["binary_ops"])
    if facts.get("float_fallbacks"):
        check.add(
            "binary layers kept as exact float convs", True, ", ".join(facts["float_fallbacks"])
        )
    with atomic_path(output) as tmp:
        tmp.write_bytes(artifact)
        if validate and data is not None:
            _log(
                progress, f"validating on the {data.spec} test split ({len(data.y_test)} images)..."
            )
            from bnn_export.runtime.runners import open_runner

            runner = open_runner(tmp)  # the kind is read from the content
            logits = runner.predict(data.x_test)
            reference = _reference_logits(source, data.x_test)
            parity_checks(check, logits, reference, data.y_test)
            if "runtime_ops" in runner.info:
                check.numbers["runtime_ops"] = runner.info["runtime_ops"]
        if not check.ok:
            raise BnnExportError(
                "the converted model failed verification; nothing was written:\n"
                + check.checklist(),
                hint="rerun with --debug, or --no-validate to keep an unverified file",
            )
    size = Path(output).stat().st_size
    summary = "\n".join([check.checklist(), f"wrote {output} ({size:,} bytes)"])
    return {"output": output, "format": fmt, "target": target if fmt == "onnx" else "lce",
            "bytes": size, "facts": facts, "validation": check.to_dict(),
            "bit_ratio_fix": source.bit_ratio_fix, "summary": summary}  # fmt: skip


def _reference_logits(source: Any, x: Any) -> Any:
    if source.model is not None:
        from bnn_export.models.evaluation import predict

        return predict(source.model, x)
    from bnn_export.models.larq_build import larq_model_from_checkpoint

    model = larq_model_from_checkpoint(source.checkpoint)
    import numpy as np

    return np.asarray(model.predict(np.transpose(x, (0, 2, 3, 1)), verbose=0, batch_size=256))
