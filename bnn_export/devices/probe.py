"""Describe a POSIX device (Linux or Android) from one shell script's output."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

_MARK = "@@bnn-export:"

# Each section prints a marker line, then the command's output (empty when unreadable).
_SECTIONS = {
    "arch": "uname -m",
    "kernel": "uname -sr",
    "cores": "nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null",
    "governor": "cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null",
    "os": '(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")',
    "cpuinfo": "cat /proc/cpuinfo 2>/dev/null",
}

# Android system properties read with getprop, and the info key each one fills.
ANDROID_PROPS = {
    "ro.product.model": "model",
    "ro.product.cpu.abi": "abi",
    "ro.build.version.release": "android_release",
}

# ARM Ltd. (implementer 0x41) CPU part numbers, as listed in Arm's technical reference manuals.
_ARM_PARTS = {
    "0xd03": "Cortex-A53",
    "0xd04": "Cortex-A35",
    "0xd05": "Cortex-A55",
    "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72",
    "0xd09": "Cortex-A73",
    "0xd0a": "Cortex-A75",
    "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1",
    "0xd0d": "Cortex-A77",
    "0xd41": "Cortex-A78",
    "0xd44": "Cortex-X1",
    "0xd46": "Cortex-A510",
    "0xd47": "Cortex-A710",
    "0xd48": "Cortex-X2",
    "0xd4d": "Cortex-A715",
    "0xd4e": "Cortex-X3",
    "0xd80": "Cortex-A520",
    "0xd81": "Cortex-A720",
    "0xd82": "Cortex-X4",
}


def probe_script(*, android: bool = False) -> str:
    """The shell script whose output :func:`parse_probe` reads."""
    sections = dict(_SECTIONS)
    if android:
        sections.update({f"prop:{key}": f"getprop {key}" for key in ANDROID_PROPS})
    return "\n".join(f"echo '{_MARK}{name}'; {cmd}" for name, cmd in sections.items()) + "\n"


def _split_sections(output: str) -> dict[str, str]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith(_MARK):
            current = sections.setdefault(line[len(_MARK) :].strip(), [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines).strip() for name, lines in sections.items()}


def _cpuinfo_fields(cpuinfo: str) -> list[dict[str, str]]:
    """/proc/cpuinfo as a list of blocks (one per processor, plus trailing board fields)."""
    blocks: list[dict[str, str]] = [{}]
    for line in cpuinfo.splitlines():
        if not line.strip():
            if blocks[-1]:
                blocks.append({})
            continue
        key, sep, value = line.partition(":")
        if sep:
            blocks[-1][key.strip().lower()] = value.strip()
    return [b for b in blocks if b]


def describe_cpu(cpuinfo: str) -> dict[str, str | None]:
    """``cpu_model`` and ``board`` from /proc/cpuinfo (x86, Raspberry Pi and Android layouts)."""
    blocks = _cpuinfo_fields(cpuinfo)
    merged: dict[str, str] = {}
    for block in blocks:
        for key, value in block.items():
            merged.setdefault(key, value)
    parts = Counter(
        _ARM_PARTS.get(block["cpu part"].lower(), f"ARM part {block['cpu part']}")
        for block in blocks
        if "cpu part" in block and block.get("cpu implementer", "").lower() == "0x41"
    )
    if parts:
        cpu_model: str | None = " + ".join(f"{n}x {name}" for name, n in sorted(parts.items()))
    else:
        cpu_model = merged.get("model name") or merged.get("processor") or None
        if cpu_model is not None and re.fullmatch(r"\d+", cpu_model):
            cpu_model = None  # "processor : 0" is an index, not a name
    board = merged.get("model") if not merged.get("model", "").isdigit() else None
    return {"cpu_model": cpu_model, "board": board or merged.get("hardware")}


def parse_probe(output: str, *, transport: str) -> dict[str, Any]:
    """Turn the output of :func:`probe_script` into the device info dict."""
    sections = _split_sections(output)
    cores_text = sections.get("cores", "")
    info: dict[str, Any] = {
        "transport": transport,
        "arch": sections.get("arch") or None,
        "kernel": sections.get("kernel") or None,
        "cores": int(cores_text) if cores_text.isdigit() else None,
        "governor": sections.get("governor") or None,
        "os": sections.get("os") or None,
    }
    info.update(describe_cpu(sections.get("cpuinfo", "")))
    props = {k.removeprefix("prop:"): v for k, v in sections.items() if k.startswith("prop:")}
    for prop, key in ANDROID_PROPS.items():
        if prop in props:
            info[key] = props[prop] or None
    if info.get("android_release"):
        info["os"] = f"Android {info['android_release']}"
    return info
