"""The bench command's flow: models -> where to run each -> rows -> report files.

Nothing is written until every model has been measured, so a failed run leaves no partial
report behind; the device layer removes its remote temp dirs on every path.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnn_export.bench.accuracy import EvalSet, load_eval_set, score
from bnn_export.bench.latency import LatencySettings
from bnn_export.bench.model_record import ModelFile, input_shape_of, model_record, open_model_file
from bnn_export.devices import Device, DeviceError, parse_device_url
from bnn_export.errors import BnnExportError, unknown_name
from bnn_export.fileio import write_files, write_json

RUNTIME_CHOICES = ("auto", "lce", "onnxruntime", "openvino", "torch")
_RUNTIMES_FOR = {
    "checkpoint": ("auto", "torch"),
    "tflite": ("auto", "lce"),
    "onnx": ("auto", "onnxruntime", "openvino"),
}


DEFAULT_TIMEOUT = 600.0
DEFAULT_REMOTE_PYTHON = "python3"


@dataclass(frozen=True)
class BenchOptions:
    device: str = "local"
    runtime: str = "auto"
    num_threads: int = 1
    latency: LatencySettings = LatencySettings()
    dataset: str | None = None
    reference: str | None = None
    max_eval: int | None = None
    timeout: float | None = None  # None: DEFAULT_TIMEOUT
    lce_benchmark_binary: str | None = None
    taskset: str | None = None
    emulator: str | None = None
    remote_python: str | None = None  # None: DEFAULT_REMOTE_PYTHON
    remote_tmp: str | None = None
    ssh_identity: str | None = None
    ssh_known_hosts: str | None = None
    ssh_config: str | None = None
    ssh_options: tuple[str, ...] = ()


def check_output_location(path: str, *, directory: bool) -> None:
    """Fail before measuring if ``path`` could not be written; creates nothing."""
    p = Path(path).absolute()
    if p.exists() and p.is_dir() != directory:
        what = "a directory" if p.is_dir() else "a file"
        raise BnnExportError(
            f"cannot write {path!r}: it is {what}", hint="choose another output path"
        )
    ancestor = p.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise BnnExportError(
            f"cannot write {path!r}: {str(ancestor)!r} is not a writable directory",
            hint="choose a writable output path",
        )


def _log(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def device_error(exc: DeviceError) -> BnnExportError:
    return BnnExportError(f"[{exc.reason}] {exc}")


def open_device(options: BenchOptions) -> Device:
    try:
        return parse_device_url(
            options.device,
            identity_file=options.ssh_identity,
            known_hosts_file=options.ssh_known_hosts,
            strict_host_key_checking="yes" if options.ssh_known_hosts else "accept-new",
            ssh_config=options.ssh_config,
            ssh_options=options.ssh_options,
            temp_root=options.remote_tmp,
        )
    except DeviceError as exc:
        raise device_error(exc) from None


def check_plan(model: ModelFile, device: Device, options: BenchOptions) -> None:
    """Refuse combinations that cannot run, before anything is measured."""
    if options.runtime not in _RUNTIMES_FOR[model.kind]:
        valid = " or ".join(r for r in _RUNTIMES_FOR[model.kind] if r != "auto")
        raise BnnExportError(
            f"{str(model.path)!r} is a {model.kind}; it runs with --runtime {valid}, "
            f"not {options.runtime!r}",
            hint="leave --runtime at auto, or bench the artifacts in separate commands",
        )
    remote = device.transport != "local"
    if model.kind == "checkpoint" and remote:
        raise BnnExportError(
            f"{str(model.path)!r} is a checkpoint; checkpoints run on this machine only",
            hint="bench the checkpoint with --device local and the artifacts on the device",
        )
    if model.kind == "onnx" and device.transport == "adb":
        raise BnnExportError(
            f"{str(model.path)!r}: .onnx models cannot be benched over adb (no Python worker "
            "on Android)",
            hint="convert with --format tflite and bench the .tflite on the phone",
        )
    if model.kind == "tflite" and remote and not options.lce_benchmark_binary:
        raise BnnExportError(
            f"{str(model.path)!r} on {device.describe()} runs with lce_benchmark_model, whose "
            "path was not given",
            hint="pass --lce-benchmark-binary PATH (on the device; for adb a local file is pushed)",
        )
    if options.emulator and not (
        (model.kind == "tflite" and options.lce_benchmark_binary)
        or (model.kind == "onnx" and device.transport == "ssh")
    ):
        raise BnnExportError(
            f"--emulator cannot run {str(model.path)!r} on {device.describe()}: it applies to "
            ".tflite files run with --lce-benchmark-binary and to .onnx files run by the "
            "worker on an ssh device",
            hint="bench the other models in a command without --emulator",
        )


def _on_device(model: ModelFile, device: Device, options: BenchOptions) -> bool:
    """Whether ``measure`` runs ``model`` through the device layer (a command that can
    time out, temp files under --remote-tmp), not in this process."""
    return (model.kind == "tflite" and bool(options.lce_benchmark_binary)) or (
        model.kind == "onnx" and device.transport == "ssh"
    )


def check_options_apply(models: list[ModelFile], device: Device, options: BenchOptions) -> None:
    """Refuse options that no model of this command would use (they would be ignored)."""
    ssh_given = [
        name
        for name, value in (
            ("--ssh-identity", options.ssh_identity),
            ("--ssh-known-hosts", options.ssh_known_hosts),
            ("--ssh-config", options.ssh_config),
            ("--ssh-option", options.ssh_options),
        )
        if value
    ]
    if ssh_given and device.transport != "ssh":
        raise BnnExportError(
            f"{', '.join(ssh_given)} configure(s) ssh, and the device is {device.describe()}",
            hint="drop the ssh options, or bench on --device ssh://user@host",
        )
    on_device = [m for m in models if _on_device(m, device, options)]
    if options.lce_benchmark_binary and not any(m.kind == "tflite" for m in models):
        raise BnnExportError(
            "--lce-benchmark-binary runs .tflite files, and none of the models is one",
            hint="drop --lce-benchmark-binary, or add the .tflite files to bench",
        )
    if options.taskset and not any(m.kind == "tflite" for m in on_device):
        raise BnnExportError(
            "--taskset pins lce_benchmark_model, which runs only .tflite files benched with "
            "--lce-benchmark-binary; no model here is",
            hint="drop --taskset, or pass --lce-benchmark-binary PATH with a .tflite file",
        )
    if options.remote_python is not None and not any(m.kind == "onnx" for m in on_device):
        raise BnnExportError(
            "--remote-python runs the .onnx worker on an ssh device; no model here runs there",
            hint="drop --remote-python, or bench .onnx files on --device ssh://user@host",
        )
    for given, option in (
        (options.timeout is not None, "--timeout"),
        (options.remote_tmp is not None, "--remote-tmp"),
    ):
        if given and not on_device:
            raise BnnExportError(
                f"{option} applies to models run through the device layer (.tflite with "
                "--lce-benchmark-binary, .onnx on an ssh device); every model here runs in "
                "this process",
                hint=f"drop {option}",
            )


def check_scoring_options(model: ModelFile, options: BenchOptions) -> None:
    """Refuse accuracy options for a model that gets no accuracy (no test images)."""
    for given, option in (
        (options.reference is not None, "--reference"),
        (options.max_eval is not None, "--max-eval"),
    ):
        if given:
            raise BnnExportError(
                f"{option} applies to the accuracy on a test split, and {str(model.path)!r} "
                "records no dataset to score it on",
                hint=f"pass --dataset (e.g. digits), or drop {option}",
            )


def check_eval_preprocessing(
    model: ModelFile, recorded: dict[str, Any] | None, eval_set: EvalSet
) -> None:
    """Refuse to score a model on images preprocessed otherwise than it records (models
    exported before preprocessing was recorded are not checked)."""
    from bnn_export.datasets import preprocessing_mismatch

    if recorded is None:
        return
    mismatch = preprocessing_mismatch(recorded, eval_set.preprocessing)
    if mismatch is not None:
        raise BnnExportError(
            f"{str(model.path)!r}: {mismatch}; its accuracy on {eval_set.spec} would mean nothing",
            hint="pass a --dataset preprocessed the way the model was trained (by default the "
            "dataset it was trained on)",
        )


class EvalSets:
    """Eval images per (dataset, input shape), loaded once."""

    def __init__(self, options: BenchOptions) -> None:
        self.options = options
        self.cache: dict[tuple[str, tuple[int, ...] | None], EvalSet] = {}

    def get(self, model: ModelFile, record: dict[str, Any]) -> EvalSet | None:
        spec = self.options.dataset or record.get("trained_on")
        if spec is None:
            return None
        shape = tuple(record["input_shape"]) if record.get("input_shape") else None
        key = (spec, shape)
        if key not in self.cache:
            self.cache[key] = load_eval_set(
                spec,
                input_shape=shape or (),
                trained_on=record.get("trained_on") if shape else None,
                max_eval=self.options.max_eval,
            )
        eval_set = self.cache[key]
        if shape is not None and tuple(eval_set.x.shape[1:]) != shape:
            raise BnnExportError(
                f"the {eval_set.spec} test images have shape {tuple(eval_set.x.shape[1:])} "
                f"(C, H, W), but {str(model.path)!r} takes {shape}",
                hint="pass a --dataset whose images the model was exported for (by default the "
                "dataset it was trained on)",
            )
        check_eval_preprocessing(model, record.get("preprocessing"), eval_set)
        return eval_set


class Reference:
    """Logits of the --reference checkpoint, per eval set."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.runner: Any = None
        self.logits: dict[int, np.ndarray] = {}

    def get(self, eval_set: EvalSet | None) -> np.ndarray | None:
        if self.path is None or eval_set is None:
            return None
        if id(eval_set) not in self.logits:
            if self.runner is None:
                from bnn_export.runtime.runners import TorchRunner

                self.runner = TorchRunner(self.path)
            self.logits[id(eval_set)] = self.runner.predict(eval_set.x)
        return self.logits[id(eval_set)]


def device_record(
    info: dict[str, Any], *, emulated: bool, emulator: Any, note: Any
) -> dict[str, Any]:
    extra: dict[str, Any] = {
        k: info[k] for k in ("board", "model", "abi", "android_release", "serial") if k in info
    }
    return {
        "transport": info.get("transport"),
        "target": info.get("target"),
        "cpu": info.get("cpu_model"),
        "cores": info.get("cores"),
        "os": info.get("os"),
        "arch": info.get("arch"),
        "kernel": info.get("kernel"),
        "governor": info.get("governor"),
        "emulated": bool(emulated),
        "emulator": emulator,
        "note": note,
        **extra,
    }


def measure(
    model: ModelFile,
    device: Device,
    options: BenchOptions,
    eval_set: EvalSet | None,
    device_info: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    """runtime, latency_us, device, logits (None when the device returns none)."""
    from bnn_export.bench import local, remote

    path = str(model.path)
    binary = options.lce_benchmark_binary
    emulator = shlex.split(options.emulator) if options.emulator else None
    if model.kind == "tflite" and binary:
        measured = remote.bench_tflite_on_device(
            device,
            path,
            binary=binary,
            num_threads=options.num_threads,
            settings=options.latency,
            timeout=options.timeout or DEFAULT_TIMEOUT,
            taskset=options.taskset,
            emulator=emulator,
        )
    elif model.kind == "onnx" and device.transport == "ssh":
        measured = remote.bench_onnx_over_ssh(
            device,
            path,
            runtime=options.runtime,
            num_threads=options.num_threads,
            settings=options.latency,
            eval_set=eval_set,
            timeout=options.timeout or DEFAULT_TIMEOUT,
            remote_python=options.remote_python or DEFAULT_REMOTE_PYTHON,
            device_info=device_info,
            emulator=emulator,
        )
        measured["accuracy_on"] = "device"
        return {
            **measured,
            "device": device_record(
                measured.pop("device"),
                emulated=measured.pop("emulated"),
                emulator=measured.pop("emulator"),
                note=measured.pop("note"),
            ),
        }
    else:
        measured = local.bench_local(
            path,
            runtime=options.runtime,
            num_threads=options.num_threads,
            settings=options.latency,
            eval_set=eval_set,
        )
        measured["accuracy_on"] = "device"
        return {
            **measured,
            "device": device_record(device_info(), emulated=False, emulator=None, note=None),
        }
    # lce_benchmark_model prints no outputs: accuracy comes from the LCE interpreter here.
    if eval_set is not None:
        measured["logits"] = local.local_logits(path, runtime="lce", eval_set=eval_set)
    measured["accuracy_on"] = "local"
    measured["device"] = device_record(
        measured["device"],
        emulated=measured.pop("emulated"),
        emulator=measured.pop("emulator"),
        note=measured.pop("note"),
    )
    return measured


def run_bench(
    paths: list[str],
    options: BenchOptions,
    *,
    json_out: str | None,
    report_dir: str | None,
    progress: bool = True,
) -> dict[str, Any]:
    from bnn_export.bench.report import REPORT_FILES, make_report, markdown_table, plot_png

    if not paths:
        raise BnnExportError(
            "no models given", hint="bnn-export bench MODEL.tflite MODEL.onnx RUN_DIR"
        )
    if options.runtime not in RUNTIME_CHOICES:
        raise unknown_name("runtime", options.runtime, RUNTIME_CHOICES)
    if json_out is not None:
        check_output_location(json_out, directory=False)
    if report_dir is not None:
        check_output_location(report_dir, directory=True)
    device = open_device(options)
    models = [open_model_file(p) for p in paths]
    for model in models:
        check_plan(model, device, options)
    check_options_apply(models, device, options)
    if options.reference is not None:
        open_model_file(options.reference)  # a clear error now rather than after timing
    evals, reference = EvalSets(options), Reference(options.reference)
    device_info = functools.cache(device.info)  # probed once per command
    results = []
    try:
        plan = []
        for model in models:  # everything that can be refused, before any timing
            record = model_record(model)
            if record.get("input_shape") is None:
                shape = input_shape_of(model)
                record["input_shape"] = list(shape) if shape else None
            eval_set = evals.get(model, record)
            if eval_set is None:
                check_scoring_options(model, options)
            plan.append((model, record, eval_set))
        for model, record, eval_set in plan:
            _log(progress, f"bench: {model.path} on {device.describe()} ...")
            measured = measure(model, device, options, eval_set, device_info)
            accuracy = None
            if eval_set is not None and measured["logits"] is not None:
                accuracy = score(measured["logits"], eval_set.y, reference=reference.get(eval_set))
                accuracy.update(
                    dataset=eval_set.spec,
                    reference=options.reference,
                    measured_on=measured["accuracy_on"],
                )
            results.append(
                {
                    "model": record,
                    "runtime": measured["runtime"],
                    "device": measured["device"],
                    "latency_us": measured["latency_us"],
                    "accuracy": accuracy,
                }
            )
    except DeviceError as exc:
        raise device_error(exc) from None
    settings = {
        "device": options.device,
        "runtime": options.runtime,
        "num_threads": options.num_threads,
        "num_runs": options.latency.num_runs,
        "warmup_runs": options.latency.warmup_runs,
        "min_secs": options.latency.min_secs,
        "max_secs": options.latency.max_secs,
        "dataset": options.dataset,
        "reference": options.reference,
        "max_eval": options.max_eval,
        "timeout": options.timeout or DEFAULT_TIMEOUT,
        "taskset": options.taskset,
        "emulator": options.emulator,
        "lce_benchmark_binary": options.lce_benchmark_binary,
    }
    report = make_report(results, settings)
    table = markdown_table(report)
    written = []
    if json_out is not None:
        write_json(json_out, report)
        written.append(json_out)
    if report_dir is not None:
        png = plot_png(report)
        directory = Path(report_dir)
        write_files(
            directory,
            {
                "bench.json": (json.dumps(report, indent=2, sort_keys=True) + "\n").encode(),
                "bench.md": (table + "\n").encode(),
                "bench.png": png,
            },
        )
        written += [str(directory / n) for n in REPORT_FILES]
    return {"report": report, "table": table, "written": written}


def check_agreement(report: dict[str, Any], minimum: float | None) -> None:
    """With ``--min-agreement``: fail (after the report is out) if a row agrees less."""
    if minimum is None:
        return
    rows = report["results"]
    missing = [
        r["model"]["name"] for r in rows if (r.get("accuracy") or {}).get("agreement") is None
    ]
    if missing:
        raise BnnExportError(
            f"--min-agreement needs an agreement for every model; none for {', '.join(missing)}",
            hint="pass --reference RUN_DIR and a dataset (--dataset or one recorded in the model)",
        )
    low = [
        f"{r['model']['name']} ({r['runtime']['name']}): {r['accuracy']['agreement']:.2%}"
        for r in rows
        if r["accuracy"]["agreement"] < minimum
    ]
    if low:
        raise BnnExportError(
            f"agreement with the reference below {minimum:.2%}: {'; '.join(low)}",
            hint="the artifact computes something else than the trained model: re-convert it, "
            "and check `bnn-export convert`'s checklist",
        )
