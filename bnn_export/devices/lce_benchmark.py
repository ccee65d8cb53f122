"""Run LCE's ``lce_benchmark_model`` on a device and read its latency statistics.

Output format, as documented in larq/compute-engine ``docs/get_started.md`` ("3. Benchmarking")
and in TensorFlow's ``tensorflow/lite/tools/benchmark/README.md`` (newer builds prefix each line
with ``INFO: `` and append ``p5=.. median=.. p95=..``)::

    Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if ...
    count=12 first=156677 curr=33205 min=32578 max=156677 avg=43268.1 std=34197

    Running benchmark for at least 50 iterations and at least 1 seconds but terminate if ...
    count=50 first=33228 curr=33130 min=32687 max=33239 avg=33071.8 std=129

    Inference timings in us: Init: 3501, First inference: 156677, Warmup (avg): 43268.1, ...

The first ``count=`` line is the warm-up, the one after the last "Running benchmark" header is
the timed runs. Older TFLite builds end with ``Average inference timings in us: Warmup: ..,
Init: .., no stats: ..`` instead; both are read. The tool logs to stderr, so both streams are
parsed.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bnn_export.devices.base import Device
from bnn_export.devices.elf_arch import can_run, elf_arch
from bnn_export.devices.errors import DeviceError

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_HEADER = "Running benchmark for at least"
_STAT = re.compile(rf"\b(count|first|curr|min|max|avg|std|p5|median|p95)=({_NUMBER})(?=\s|$)")
_TIMINGS = re.compile(r"(?:Average )?[Ii]nference timings in us:\s*(.*)$")
_TIMING_KEYS = {
    "init": "init",
    "first inference": "first_inference",
    "warmup (avg)": "warmup_mean",
    "warmup": "warmup_mean",
    "inference (avg)": "inference_mean",
    "no stats": "inference_mean",
}
# Names in the result for the statistics line's fields (TFLite's `avg` is our `mean`).
_STAT_KEYS = {"avg": "mean", "median": "p50"}
_TASKSET_MASK = re.compile(r"(0x)?[0-9a-fA-F]+")


def build_lce_benchmark_argv(
    binary: str,
    graph: str,
    *,
    num_threads: int = 1,
    num_runs: int = 50,
    warmup_runs: int = 1,
    min_secs: float | None = None,
    use_reference_bconv: bool = False,
    use_indirect_bgemm: bool = False,
) -> list[str]:
    """The ``lce_benchmark_model`` command line (TFLite ``benchmark_model`` flag names)."""
    for name, value, low in (
        ("num_threads", num_threads, 1),
        ("num_runs", num_runs, 1),
        ("warmup_runs", warmup_runs, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"Expected `{name}` to be an integer >= {low}, but got {value!r}")
    argv = [
        binary,
        f"--graph={graph}",
        f"--num_threads={num_threads}",
        f"--num_runs={num_runs}",
        f"--warmup_runs={warmup_runs}",
    ]
    if min_secs is not None:
        if min_secs < 0:
            raise ValueError(f"Expected `min_secs` to be >= 0, but got {min_secs!r}")
        argv.append(f"--min_secs={min_secs:g}")
    if use_reference_bconv:
        argv.append("--use_reference_bconv=true")
    if use_indirect_bgemm:
        argv.append("--use_indirect_bgemm=true")
    return argv


def _bad_output(why: str, output: str) -> DeviceError:
    head = "\n".join(f"  | {line}" for line in output.strip().splitlines()[:12]) or "  | (empty)"
    return DeviceError(
        "bad-output",
        f"Could not read lce_benchmark_model's output: {why}. Its first lines were:\n{head}\n"
        "Check that the binary is lce_benchmark_model (or TFLite's benchmark_model) and that the "
        "model loaded.",
    )


def _number(text: str) -> float | int:
    value = float(text)
    return (
        int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value
    )


def parse_lce_benchmark_output(output: str) -> dict[str, Any]:
    """Latency statistics of the timed runs, in microseconds.

    Keys: count, first, curr, min, max, mean, std (and p5, p50, p95 when printed) from the
    timed-run statistics line; init, first_inference, warmup_mean, inference_mean from the
    "Inference timings in us" line (those the tool printed).
    """
    lines = output.splitlines()
    headers = [i for i, line in enumerate(lines) if _HEADER in line]
    if not headers:
        raise _bad_output(f"no {_HEADER!r} line", output)
    stats: dict[str, float | int] | None = None
    for line in lines[headers[-1] + 1 :]:
        fields: dict[str, str] = dict(_STAT.findall(line))
        if "count" in fields:
            stats = {_STAT_KEYS.get(k, k): _number(v) for k, v in fields.items()}
            break
    if stats is None:
        raise _bad_output("no 'count=...' statistics line after the timed-run header", output)
    if "mean" not in stats and "curr" in stats:
        # With a single run TFLite prints only `count=1 curr=X`.
        stats.update(first=stats["curr"], min=stats["curr"], max=stats["curr"])
        stats.update(mean=stats["curr"], std=0)
    missing = [k for k in ("count", "min", "max", "mean", "std") if k not in stats]
    if missing:
        raise _bad_output(f"the statistics line lacks {', '.join(missing)}", output)
    timings: dict[str, float | int] = {}
    for line in lines:
        match = _TIMINGS.search(line)
        if match:
            for item in match.group(1).split(","):
                key, _, value = item.partition(":")
                name = _TIMING_KEYS.get(key.strip().lower())
                if name is not None and re.fullmatch(_NUMBER, value.strip()):
                    timings[name] = _number(value.strip())
    if "inference_mean" not in timings:
        raise _bad_output("no 'Inference timings in us' summary line (did the run crash?)", output)
    return {**stats, **timings}


def _file_record(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": digest}


def emulation_note(emulator: Sequence[str] | None, arch: str | None) -> str | None:
    if not emulator:
        return None
    return (
        f"Measured under user-mode emulation ({' '.join(emulator)}) on a {arch or 'unknown'} "
        "host: these timings are NOT ARM latency and must not be reported as such."
    )


def run_lce_benchmark(
    device: Device,
    tflite_path: str | os.PathLike[str],
    *,
    binary: str,
    num_threads: int = 1,
    num_runs: int = 50,
    warmup_runs: int = 1,
    min_secs: float | None = None,
    timeout: float = 600.0,
    taskset: str | None = None,
    use_reference_bconv: bool = False,
    use_indirect_bgemm: bool = False,
    push_binary: bool | None = None,
    emulator: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Copy the model to a temp dir on ``device``, benchmark it there, and clean up.

    ``binary`` is the path of ``lce_benchmark_model`` on the device; with ``push_binary``
    (default: on for adb when ``binary`` is a local file) it is a local file copied over and
    made executable. ``taskset`` is a CPU mask such as ``f0`` (Android big cores). ``emulator``
    (e.g. ``["qemu-aarch64-static"]``) prefixes the command; such results carry
    ``emulated: true`` and are not ARM latency.
    """
    model = Path(tflite_path)
    if not model.is_file():
        raise FileNotFoundError(f"Cannot benchmark {str(model)!r}: no such file")
    if taskset is not None and not _TASKSET_MASK.fullmatch(taskset):
        raise ValueError(
            f"Expected `taskset` to be a hex CPU mask such as 'f0', but got {taskset!r}"
        )
    if push_binary is None:
        push_binary = device.transport == "adb" and Path(binary).is_file()
    if push_binary and not Path(binary).is_file():
        raise FileNotFoundError(f"Cannot push the benchmark binary {binary!r}: no such local file")
    info = device.info()
    local_binary = push_binary or device.transport == "local"
    if local_binary and not emulator and Path(binary).is_file():
        built_for = elf_arch(binary)
        if not can_run(built_for, info.get("arch")):
            raise DeviceError(
                "wrong-arch",
                f"{binary!r} is built for {built_for}, but {device.describe()} is "
                f"{info.get('arch')}. Use the lce_benchmark_model build for {info.get('arch')}; "
                "to only check the flow under emulation, pass emulator=['qemu-aarch64-static'] "
                "(such timings are not ARM latency).",
            )
    with device.temp_dir() as tmp:
        remote_model = f"{tmp}/{model.name}"
        device.push(str(model), remote_model)
        remote_binary = binary
        if push_binary:
            remote_binary = f"{tmp}/lce_benchmark_model"
            device.push(binary, remote_binary)
            device.make_executable(remote_binary)
        argv = build_lce_benchmark_argv(
            remote_binary,
            remote_model,
            num_threads=num_threads,
            num_runs=num_runs,
            warmup_runs=warmup_runs,
            min_secs=min_secs,
            use_reference_bconv=use_reference_bconv,
            use_indirect_bgemm=use_indirect_bgemm,
        )
        prefix = [*(["taskset", taskset] if taskset else []), *(emulator or [])]
        try:
            result = device.run([*prefix, *argv], timeout=timeout, cwd=tmp)
        except DeviceError as exc:
            if exc.reason not in ("missing-binary", "not-executable"):
                raise
            raise DeviceError(
                exc.reason,
                f"{exc} lce_benchmark_model must be on the device: copy LCE's prebuilt binary "
                "for its architecture (aarch64, aarch32 or android_arm64) there and pass its "
                "path with --lce-benchmark-binary (for adb a local path is pushed for you).",
            ) from exc
    output = result.stdout + "\n" + result.stderr
    if result.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-12:])
        raise DeviceError(
            "command-failed",
            f"lce_benchmark_model exited with status {result.returncode} on "
            f"{device.describe()}. Its last lines were:\n{tail}\nCheck that the model was "
            "converted for LCE and that the binary matches the device.",
        )
    return {
        "tool": "lce_benchmark_model",
        "device": info,
        "emulated": bool(emulator),
        "emulator": list(emulator) if emulator else None,
        "note": emulation_note(emulator, info.get("arch")),
        "model": _file_record(model),
        "settings": {
            "binary": binary,
            "num_threads": num_threads,
            "num_runs": num_runs,
            "warmup_runs": warmup_runs,
            "min_secs": min_secs,
            "taskset": taskset,
            "use_reference_bconv": use_reference_bconv,
            "use_indirect_bgemm": use_indirect_bgemm,
        },
        "command": [*prefix, *argv],
        "wall_seconds": result.seconds,
        "latency_us": parse_lce_benchmark_output(output),
    }
