"""The Device interface: a place to copy files to and run programs on."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

from bnn_export.devices.errors import DeviceError
from bnn_export.devices.process import CompletedRun


class Device(ABC):
    """A benchmark target. Paths given to ``push``/``pull``/``run`` are paths on the device.

    Use :meth:`temp_dir` rather than :meth:`make_temp_dir` so the device is left clean.
    """

    transport: str = ""

    @abstractmethod
    def describe(self) -> str:
        """A short name for messages, e.g. ``ssh://pi@raspberrypi:22``."""

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """transport, arch, cpu_model, cores, os, kernel, governor (None if unreadable)."""

    @abstractmethod
    def make_temp_dir(self) -> str:
        """Create a fresh directory on the device and return its path."""

    @abstractmethod
    def push(self, local: str, remote: str) -> None:
        """Copy the local file ``local`` to the device path ``remote``."""

    @abstractmethod
    def pull(self, remote: str, local: str) -> None:
        """Copy the device file ``remote`` to the local path ``local``."""

    @abstractmethod
    def run(self, argv: Sequence[str], timeout: float, *, cwd: str | None = None) -> CompletedRun:
        """Run ``argv`` on the device; a non-zero exit is returned, not raised.

        Raises DeviceError when the command cannot be started (missing-binary,
        not-executable), exceeds ``timeout`` seconds (timeout) or the link drops.
        """

    @abstractmethod
    def remove(self, remote_path: str) -> None:
        """Delete a file or directory tree on the device (no error if it is gone)."""

    def make_executable(self, remote_path: str) -> None:
        """``chmod +x`` a file on the device."""
        result = self.run(["chmod", "+x", remote_path], timeout=60)
        if result.returncode != 0:
            raise DeviceError(
                "command-failed",
                f"Could not make {remote_path!r} executable on {self.describe()}: "
                f"{result.stderr.strip()}. Check that the temp dir's file system allows exec.",
            )

    @contextlib.contextmanager
    def temp_dir(self) -> Iterator[str]:
        """A fresh device directory that is removed on success, error, timeout and Ctrl-C."""
        path = self.make_temp_dir()
        try:
            yield path
        except BaseException as pending:
            self._remove_temp_dir(path, pending)
            raise
        self._remove_temp_dir(path, None)

    def _remove_temp_dir(self, path: str, pending: BaseException | None) -> None:
        try:
            self.remove(path)
        except DeviceError as cleanup_error:
            note = (
                f"The temp dir {path!r} on {self.describe()} could not be removed "
                f"({cleanup_error}); remove it by hand."
            )
            if pending is not None:
                pending.add_note(note)
                return
            raise DeviceError("cleanup-failed", note) from cleanup_error


def check_launch(device: Device, argv: Sequence[str], result: CompletedRun) -> CompletedRun:
    """Turn a shell's "not found" (127) or "cannot execute" (126) into a DeviceError."""
    err = result.stderr.lower()
    program = argv[0] if argv else ""
    if result.returncode == 127 and ("not found" in err or "no such file" in err):
        raise DeviceError(
            "missing-binary",
            f"{program!r} was not found on {device.describe()} ({result.stderr.strip()}). "
            "Copy it to the device and pass its full path, or check the spelling.",
        )
    if result.returncode == 126:
        raise DeviceError(
            "not-executable",
            f"{program!r} exists on {device.describe()} but cannot be executed "
            f"({result.stderr.strip()}). Run `chmod +x` on it and check it was built for "
            "the device's architecture.",
        )
    return result
