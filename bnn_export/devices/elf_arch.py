"""Which CPU a local ELF binary is built for, to refuse running it on the wrong device."""

from __future__ import annotations

import struct
from pathlib import Path

# ELF e_machine values (System V ABI) and the names we compare with `uname -m`.
_E_MACHINE = {0x03: "x86", 0x28: "arm", 0x3E: "x86_64", 0xB7: "aarch64"}
_UNAME = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "i386": "x86",
    "i686": "x86",
    "aarch64": "aarch64",
    "arm64": "aarch64",
}


def elf_arch(path: str | Path) -> str | None:
    """``aarch64``, ``arm``, ``x86_64``, ``x86``; None for a script or an unknown machine."""
    with open(path, "rb") as handle:
        header = handle.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    byte_order = "<" if header[5] == 1 else ">"
    (machine,) = struct.unpack(f"{byte_order}H", header[18:20])
    return _E_MACHINE.get(machine)


def device_arch(uname_m: str | None) -> str | None:
    """`uname -m` of a device in the names :func:`elf_arch` uses."""
    if not uname_m:
        return None
    if uname_m.startswith("arm"):
        return "aarch64" if uname_m == "arm64" else "arm"
    return _UNAME.get(uname_m)


def can_run(binary_arch: str | None, uname_m: str | None) -> bool:
    """False only when both are known and the device cannot run the binary natively."""
    device = device_arch(uname_m)
    if binary_arch is None or device is None:
        return True
    return binary_arch == device or (device, binary_arch) in {("aarch64", "arm"), ("x86_64", "x86")}
