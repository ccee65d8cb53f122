"""Run a command that prints a JSON object (e.g. ``python -m bnn_export.runtime.worker``)."""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bnn_export.devices.base import Device
from bnn_export.devices.errors import DeviceError
from bnn_export.devices.lce_benchmark import emulation_note

TMP_PLACEHOLDER = "{tmp}"


def _named_files(
    files: Sequence[str | os.PathLike[str]] | Mapping[str, str | os.PathLike[str]],
) -> dict[str, Path]:
    if isinstance(files, Mapping):
        named = {name: Path(path) for name, path in files.items()}
    else:
        named = {Path(path).name: Path(path) for path in files}
    for name, path in named.items():
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"Expected a plain file name to push as, but got {name!r}")
        if not path.is_file():
            raise FileNotFoundError(f"Cannot push {str(path)!r}: no such local file")
    return named


def _parse_json(text: str, where: str) -> dict[str, Any]:
    candidates = [text.strip()]
    candidates += [line.strip() for line in reversed(text.splitlines()) if line.startswith("{")]
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    head = "\n".join(f"  | {line}" for line in text.strip().splitlines()[:12]) or "  | (empty)"
    raise DeviceError(
        "bad-output",
        f"Expected a JSON object in {where}, but got:\n{head}\nMake the worker print one JSON "
        "object (alone on the last line) or write it to the result file.",
    )


def run_remote_worker(
    device: Device,
    files: Sequence[str | os.PathLike[str]] | Mapping[str, str | os.PathLike[str]],
    argv: Sequence[str],
    timeout: float,
    *,
    result_file: str | None = None,
    executables: Sequence[str] = (),
    emulator: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Push ``files`` into a fresh temp dir, run ``argv`` there, return its JSON object.

    ``files`` is a list of local paths (pushed under their names) or a {name: local path}
    mapping; the names in ``executables`` get ``chmod +x``. The command runs with the temp dir as working directory, and ``{tmp}`` inside any
    argument is replaced by the temp dir's path. The JSON is read from stdout (the whole of it,
    or its last line that starts with ``{``), or from ``result_file`` (a name inside the temp
    dir) when given. The returned object gets ``emulated`` set (true when ``emulator``, e.g.
    ``["qemu-aarch64-static"]``, prefixed the command) and ``note`` when emulated. The temp dir
    is always removed.
    """
    named = _named_files(files)
    unknown = [name for name in executables if name not in named]
    if unknown:
        raise ValueError(
            f"Expected `executables` to name pushed files {sorted(named)}, got {unknown}"
        )
    info = device.info() if emulator else None
    with device.temp_dir() as tmp:
        for name, path in named.items():
            device.push(str(path), f"{tmp}/{name}")
            if name in executables:
                device.make_executable(f"{tmp}/{name}")
        command = [*(emulator or []), *(arg.replace(TMP_PLACEHOLDER, tmp) for arg in argv)]
        result = device.run(command, timeout=timeout, cwd=tmp)
        if result.returncode != 0:
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-12:])
            raise DeviceError(
                "command-failed",
                f"{shlex.join(command)!r} exited with status {result.returncode} on "
                f"{device.describe()}:\n{tail}",
            )
        if result_file is None:
            payload = _parse_json(result.stdout, "the command's output")
        else:
            with tempfile.TemporaryDirectory(prefix="bnn-export-pull-") as local_dir:
                local = os.path.join(local_dir, "result.json")
                device.pull(f"{tmp}/{result_file}", local)
                payload = _parse_json(Path(local).read_text(errors="replace"), result_file)
    payload["emulated"] = bool(emulator)
    if emulator:
        payload["note"] = emulation_note(emulator, info.get("arch") if info else None)
    return payload
