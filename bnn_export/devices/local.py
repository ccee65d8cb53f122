"""This machine as a device: files are copied into a local temp dir."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bnn_export.devices.base import Device, check_launch
from bnn_export.devices.errors import DeviceError
from bnn_export.devices.probe import parse_probe, probe_script
from bnn_export.devices.process import CompletedRun, run_process
from bnn_export.devices.shell import check_removable


class LocalDevice(Device):
    transport = "local"

    def __init__(self, *, temp_root: str | None = None) -> None:
        self.temp_root = temp_root

    def describe(self) -> str:
        return "local"

    def info(self) -> dict[str, Any]:
        result = run_process(["/bin/sh", "-c", probe_script()], timeout=60)
        info = parse_probe(result.stdout, transport=self.transport)
        info["target"] = "local"
        return info

    def make_temp_dir(self) -> str:
        return tempfile.mkdtemp(prefix="bnn-export-", dir=self.temp_root)

    def push(self, local: str, remote: str) -> None:
        self._copy(local, remote)

    def pull(self, remote: str, local: str) -> None:
        self._copy(remote, local)

    def _copy(self, source: str, target: str) -> None:
        try:
            shutil.copyfile(source, target)
        except OSError as exc:
            reason = "disk-full" if exc.errno == 28 else "command-failed"
            raise DeviceError(reason, f"Could not copy {source!r} to {target!r}: {exc}") from exc

    def run(self, argv: Sequence[str], timeout: float, *, cwd: str | None = None) -> CompletedRun:
        try:
            result = run_process(argv, timeout=timeout, cwd=cwd)
        except subprocess.TimeoutExpired:
            raise DeviceError(
                "timeout",
                f"{shlex.join(argv)!r} did not finish within {timeout:g} s and was killed. "
                "Raise the timeout (--timeout) or lower --num-runs.",
            ) from None
        except FileNotFoundError as exc:
            raise DeviceError(
                "missing-binary", f"{argv[0]!r} was not found ({exc}). Check the path."
            ) from exc
        except PermissionError as exc:
            raise DeviceError(
                "not-executable", f"{argv[0]!r} cannot be executed ({exc}). Run `chmod +x` on it."
            ) from exc
        return check_launch(self, argv, result)

    def remove(self, remote_path: str) -> None:
        check_removable(remote_path)
        path = Path(remote_path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
