"""An Android device reached with ``adb`` (push/pull/shell).

Needs adb's shell protocol v2 (Android 7+), which passes the remote exit status back.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
from typing import Any

from bnn_export.devices.errors import DeviceError
from bnn_export.devices.process import CompletedRun, run_process
from bnn_export.devices.shell import ShellDevice
from bnn_export.devices.ssh import raise_transfer_error

ANDROID_TEMP_ROOT = "/data/local/tmp"

_NO_DEVICE_FIX = (
    "connect the phone by USB, enable USB debugging in its developer options, accept the "
    "prompt on its screen, and check that `adb devices` lists it"
)


class AdbDevice(ShellDevice):
    """``adb`` (the only connected device) or ``adb:SERIAL``."""

    transport = "adb"

    def __init__(
        self,
        serial: str | None = None,
        *,
        adb_path: str | None = None,
        temp_root: str | None = None,
        transfer_timeout: float = 600.0,
    ) -> None:
        if serial is not None and (not serial or serial.startswith("-") or " " in serial):
            raise DeviceError(
                "bad-spec", f"Expected an adb serial such as 'R58M12ABC', got {serial!r}"
            )
        self.serial = serial
        self.adb_path = adb_path or os.environ.get("BNN_EXPORT_ADB") or "adb"
        self.temp_root = (temp_root or ANDROID_TEMP_ROOT).rstrip("/") or "/"
        self.transfer_timeout = transfer_timeout
        self._checked_serial: str | None = None

    def describe(self) -> str:
        return f"adb:{self.serial}" if self.serial else "adb"

    def _adb(self, *args: str, timeout: float, serial: str | None = None) -> CompletedRun:
        executable = shutil.which(self.adb_path)
        if executable is None:
            raise DeviceError(
                "tool-missing",
                f"adb ({self.adb_path!r}) was not found. Install Android platform-tools "
                "(Debian/Ubuntu: apt-get install adb) or point BNN_EXPORT_ADB at it.",
            )
        argv = [executable, *(["-s", serial] if serial else []), *args]
        try:
            result = run_process(argv, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeviceError(
                "timeout",
                f"`adb {' '.join(args[:1])}` on {self.describe()} did not finish within "
                f"{timeout:g} s and was killed. Check the USB link, or raise the timeout.",
            ) from None
        self._raise_link_error(result)
        return result

    def _raise_link_error(self, result: CompletedRun) -> None:
        if result.returncode == 0:
            return
        # adb's own complaints start with "adb:" or "error:"; the rest is the device's output.
        text = " ".join(
            line.lower()
            for line in (result.stderr + "\n" + result.stdout).splitlines()
            if line.startswith(("adb:", "error:"))
        )
        lost = (
            f"The adb link to {self.describe()} dropped ({result.stderr.strip()!r}): "
            "reconnect the cable, run `adb reconnect`, then retry."
        )
        gone = (
            "no devices/emulators found" in text
            or "no devices found" in text
            or ("device '" in text and "not found" in text)
        )
        if gone and self._checked_serial is not None:
            raise DeviceError("connection-lost", lost)  # it was there a moment ago
        if gone:
            raise DeviceError(
                "no-device",
                f"adb does not see {self.describe()}: {_NO_DEVICE_FIX}; `adb devices` shows "
                "the serials.",
            )
        if "offline" in text or "error: closed" in text or "protocol fault" in text:
            raise DeviceError("connection-lost", lost)
        if "unauthorized" in text:
            raise DeviceError(
                "auth",
                f"{self.describe()} has not authorised this computer: unlock it and accept "
                "the USB debugging prompt.",
            )

    def connected_serials(self) -> dict[str, str]:
        """``adb devices`` as {serial: state}."""
        result = self._adb("devices", timeout=30)
        states: dict[str, str] = {}
        for line in result.stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 2:
                states[fields[0]] = fields[1]
        return states

    def _serial(self) -> str:
        """Check once that the device is there and usable; return its serial."""
        if self._checked_serial is not None:
            return self._checked_serial
        states = self.connected_serials()
        if not states:
            raise DeviceError("no-device", f"adb sees no Android device: {_NO_DEVICE_FIX}.")
        if self.serial is None:
            if len(states) > 1:
                raise DeviceError(
                    "bad-spec",
                    f"Several Android devices are connected ({', '.join(sorted(states))}); "
                    "pick one with adb:SERIAL.",
                )
            serial = next(iter(states))
        elif self.serial not in states:
            raise DeviceError(
                "no-device",
                f"Android device {self.serial!r} is not connected; adb sees "
                f"{', '.join(sorted(states))}. Use one of those serials (adb:SERIAL).",
            )
        else:
            serial = self.serial
        state = states[serial]
        if state == "unauthorized":
            raise DeviceError(
                "auth",
                f"{serial} has not authorised this computer: accept the USB debugging prompt.",
            )
        if state != "device":
            raise DeviceError(
                "connection-lost", f"{serial} is {state!r}: reconnect it and run `adb reconnect`."
            )
        self._checked_serial = serial
        return serial

    def shell(
        self,
        script: str,
        *,
        timeout: float,
        stdin_path: str | None = None,
        stdout_path: str | None = None,
    ) -> CompletedRun:
        if stdin_path is not None or stdout_path is not None:
            raise ValueError("AdbDevice.shell does not redirect files; use push/pull")
        return self._adb("shell", script, timeout=timeout, serial=self._serial())

    def info(self) -> dict[str, Any]:
        info = self._probe(android=True)
        info["serial"] = self._serial()
        return info

    def make_temp_dir(self) -> str:
        path = f"{self.temp_root}/bnn-export-{secrets.token_hex(4)}"
        result = self.shell(f"mkdir {shlex.quote(path)}", timeout=60)
        if result.returncode != 0:
            raise_transfer_error(self.describe(), f"create {path!r}", result)
        return path

    def push(self, local: str, remote: str) -> None:
        if not os.path.isfile(local):
            raise FileNotFoundError(f"Cannot push {local!r}: no such local file")
        result = self._adb(
            "push", local, remote, timeout=self.transfer_timeout, serial=self._serial()
        )
        if result.returncode != 0:
            raise_transfer_error(self.describe(), f"push {local!r} to {remote!r}", _merged(result))

    def pull(self, remote: str, local: str) -> None:
        result = self._adb(
            "pull", remote, local, timeout=self.transfer_timeout, serial=self._serial()
        )
        if result.returncode != 0:
            raise_transfer_error(self.describe(), f"pull {remote!r} to {local!r}", _merged(result))


def _merged(result: CompletedRun) -> CompletedRun:
    # adb prints some transfer errors on stdout.
    text = "\n".join(t for t in (result.stderr.strip(), result.stdout.strip()) if t)
    return CompletedRun(result.stdout, text, result.returncode, result.seconds)
