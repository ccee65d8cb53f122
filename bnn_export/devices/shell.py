"""Shared code for devices reached through a remote POSIX shell (ssh, adb shell).

Both ssh and ``adb shell`` join their arguments into ONE string that the remote shell parses,
so every argument is quoted with :func:`shlex.quote` here, and nowhere else.
"""

from __future__ import annotations

import shlex
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

from bnn_export.devices.base import Device, check_launch
from bnn_export.devices.errors import DeviceError
from bnn_export.devices.probe import parse_probe, probe_script
from bnn_export.devices.process import CompletedRun

# Seconds between the remote `timeout` sending TERM and KILL.
_KILL_AFTER = 2
# Extra local seconds before the client itself is killed, if the remote `timeout` is missing
# or the link hangs; covers connection set-up.
LOCAL_GRACE = 15.0
# Exit statuses of coreutils/toybox `timeout` when the limit was hit (TERM, then KILL).
_TIMEOUT_STATUSES = (124, 137)


def _format_seconds(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def remote_command(argv: Sequence[str], *, timeout: float, cwd: str | None = None) -> str:
    """The shell string that runs ``argv`` under the remote ``timeout`` when it exists."""
    if not argv:
        raise ValueError("Expected a non-empty argv, but got []")
    command = shlex.join(argv)
    limit = _format_seconds(timeout)
    script = (
        "if command -v timeout >/dev/null 2>&1; "
        f"then exec timeout -k {_KILL_AFTER} {limit} {command}; "
        f"else exec {command}; fi"
    )
    if cwd is not None:
        script = f"cd {shlex.quote(cwd)} && {{ {script}; }}"
    return script


def check_removable(path: str) -> None:
    """Refuse to ``rm -rf`` anything but an absolute path below the root."""
    if not path.startswith("/") or path.strip("/") == "" or "\n" in path:
        raise DeviceError(
            "bad-spec",
            f"Refusing to remove {path!r}: expected an absolute path below / "
            "(such as one returned by make_temp_dir).",
        )


class ShellDevice(Device):
    """A device whose commands run through a remote POSIX shell."""

    @abstractmethod
    def shell(
        self,
        script: str,
        *,
        timeout: float,
        stdin_path: str | None = None,
        stdout_path: str | None = None,
    ) -> CompletedRun:
        """Run a shell script on the device; raise DeviceError for link faults."""

    def run(self, argv: Sequence[str], timeout: float, *, cwd: str | None = None) -> CompletedRun:
        if timeout <= 0:
            raise ValueError(f"Expected `timeout` to be > 0 seconds, but got {timeout}")
        result = self.shell(
            remote_command(argv, timeout=timeout, cwd=cwd), timeout=timeout + LOCAL_GRACE
        )
        if result.returncode in _TIMEOUT_STATUSES and result.seconds >= timeout:
            raise DeviceError(
                "timeout",
                f"{shlex.join(argv)!r} did not finish within {timeout:g} s on "
                f"{self.describe()} and was stopped. Raise the timeout (--timeout) or "
                "lower --num-runs.",
            )
        return check_launch(self, argv, result)

    def remove(self, remote_path: str) -> None:
        check_removable(remote_path)
        result = self.shell(f"rm -rf -- {shlex.quote(remote_path)}", timeout=120)
        if result.returncode != 0:
            raise DeviceError(
                "cleanup-failed",
                f"`rm -rf {remote_path}` failed on {self.describe()}: {result.stderr.strip()}",
            )

    def _probe(self, *, android: bool = False) -> dict[str, Any]:
        result = self.shell(probe_script(android=android), timeout=60)
        info = parse_probe(result.stdout, transport=self.transport)
        info["target"] = self.describe()
        return info

    def info(self) -> dict[str, Any]:
        return self._probe()
