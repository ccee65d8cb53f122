"""The one error class of the device layer."""

from __future__ import annotations

# Reasons a DeviceError can carry; tests and callers branch on these, never on message text.
REASONS = (
    "bad-spec",  # the device URL or an option is malformed
    "tool-missing",  # ssh or adb is not installed on this machine
    "unreachable",  # no connection could be opened
    "auth",  # the connection opened but the login was refused
    "host-key",  # the host key is unknown or changed
    "no-device",  # adb sees no device, or not the one asked for
    "disk-full",  # the device has no space left for the files
    "timeout",  # a command did not finish within its time limit
    "connection-lost",  # the connection dropped while a command ran
    "missing-binary",  # the program to run is not on the device
    "not-executable",  # the program exists but cannot be executed
    "wrong-arch",  # the program is built for another CPU than the device's
    "command-failed",  # a command ran and exited with an error
    "bad-output",  # a command's output could not be understood
    "cleanup-failed",  # the remote temp dir could not be removed
)


class DeviceError(RuntimeError):
    """A device could not do what was asked.

    ``reason`` is one of :data:`REASONS`; the message names the problem and the fix.
    """

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"Expected `reason` to be one of {REASONS}, but got {reason!r}")
        super().__init__(message)
        self.reason = reason
