"""``parse_device_url``: turn a ``--device`` value into a Device."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from bnn_export.devices.adb import AdbDevice
from bnn_export.devices.base import Device
from bnn_export.devices.errors import DeviceError
from bnn_export.devices.local import LocalDevice
from bnn_export.devices.ssh import SshDevice

VALID_FORMS = "`local`, `ssh://user@host[:port]`, `adb` or `adb:SERIAL`"


def _bad(spec: str, why: str) -> DeviceError:
    return DeviceError(
        "bad-spec", f"Expected a device of the form {VALID_FORMS}, but got {spec!r} ({why})."
    )


def parse_device_url(
    spec: str,
    *,
    identity_file: str | None = None,
    known_hosts_file: str | None = None,
    strict_host_key_checking: str = "accept-new",
    ssh_config: str | None = None,
    ssh_options: Sequence[str] = (),
    temp_root: str | None = None,
    adb_path: str | None = None,
) -> Device:
    """Parse ``local``, ``ssh://user@host[:port]``, ``adb`` or ``adb:SERIAL``.

    The ssh-only options are ignored for other transports; ``temp_root`` is where the temp
    dir is made on the device (default: ``$TMPDIR`` or /tmp; /data/local/tmp on Android).
    """
    text = spec.strip()
    if text == "local":
        return LocalDevice(temp_root=temp_root)
    if text == "adb":
        return AdbDevice(adb_path=adb_path, temp_root=temp_root)
    if text.startswith("adb:"):
        serial = text[4:]
        if not serial or serial.startswith("/"):
            raise _bad(spec, "the serial after `adb:` is missing")
        return AdbDevice(serial, adb_path=adb_path, temp_root=temp_root)
    if text.startswith("ssh://"):
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise _bad(spec, str(exc)) from exc
        if not parts.hostname:
            raise _bad(spec, "the host is missing")
        if parts.password is not None:
            raise _bad(spec, "passwords are not accepted; use an ssh key")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise _bad(spec, "a path, query or fragment is not accepted")
        return SshDevice(
            parts.hostname,
            user=parts.username or None,
            port=port,
            identity_file=identity_file,
            known_hosts_file=known_hosts_file,
            strict_host_key_checking=strict_host_key_checking,
            ssh_config=ssh_config,
            ssh_options=ssh_options,
            temp_root=temp_root,
        )
    raise _bad(spec, "unknown transport")
