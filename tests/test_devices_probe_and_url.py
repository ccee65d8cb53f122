"""Device URL parsing and the device-description probe (no device needed)."""

from __future__ import annotations

import os
import sys

import pytest

from bnn_export.devices import AdbDevice, DeviceError, LocalDevice, SshDevice, parse_device_url
from bnn_export.devices.elf_arch import can_run, elf_arch
from bnn_export.devices.probe import describe_cpu, parse_probe, probe_script


def _arm_block(index: int, part: str) -> str:
    return (
        f"processor\t: {index}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
        f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n"
        f"CPU part\t: {part}\nCPU revision\t: 3\n"
    )


PI4_CPUINFO = "\n".join(_arm_block(i, "0xd08") for i in range(4)) + (
    "\nHardware\t: BCM2835\nRevision\t: c03114\nSerial\t\t: 10000000abcdef\n"
    "Model\t\t: Raspberry Pi 4 Model B Rev 1.4\n"
)
PHONE_CPUINFO = "\n".join(
    _arm_block(i, part) for i, part in enumerate(["0xd05"] * 4 + ["0xd41"] * 3 + ["0xd44"])
)
X86_CPUINFO = (
    "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
    "model name\t: AMD EPYC 9R14 96-Core Processor\n\n"
    "processor\t: 1\nvendor_id\t: AuthenticAMD\nmodel\t\t: 17\n"
    "model name\t: AMD EPYC 9R14 96-Core Processor\n"
)


def test_describe_cpu_names_raspberry_pi_cores_and_board():
    assert describe_cpu(PI4_CPUINFO) == {
        "cpu_model": "4x Cortex-A72",
        "board": "Raspberry Pi 4 Model B Rev 1.4",
    }


def test_describe_cpu_lists_big_little_clusters():
    assert describe_cpu(PHONE_CPUINFO)["cpu_model"] == (
        "4x Cortex-A55 + 3x Cortex-A78 + 1x Cortex-X1"
    )


def test_describe_cpu_x86_uses_model_name_not_model_number():
    assert describe_cpu(X86_CPUINFO) == {
        "cpu_model": "AMD EPYC 9R14 96-Core Processor",
        "board": None,
    }


def test_parse_probe_reads_android_properties():
    mark = "@@bnn-export:"
    output = (
        f"{mark}arch\naarch64\n{mark}kernel\nLinux 5.10.0\n{mark}cores\n8\n{mark}governor\n"
        f"schedutil\n{mark}os\n\n{mark}cpuinfo\n{PHONE_CPUINFO}\n"
        f"{mark}prop:ro.product.model\nPixel 6\n{mark}prop:ro.product.cpu.abi\narm64-v8a\n"
        f"{mark}prop:ro.build.version.release\n14\n"
    )
    info = parse_probe(output, transport="adb")
    assert info["os"] == "Android 14"
    assert (info["model"], info["abi"], info["android_release"]) == ("Pixel 6", "arm64-v8a", "14")
    assert (info["arch"], info["cores"], info["governor"]) == ("aarch64", 8, "schedutil")
    assert "getprop ro.product.cpu.abi" in probe_script(android=True)
    assert "getprop" not in probe_script()


def test_parse_probe_missing_sections_are_none():
    info = parse_probe("", transport="ssh")
    assert info["arch"] is None and info["cores"] is None and info["governor"] is None


@pytest.mark.parametrize(
    ("spec", "kind", "fields"),
    [
        ("local", LocalDevice, {}),
        ("ssh://pi@raspberrypi", SshDevice, {"user": "pi", "host": "raspberrypi", "port": None}),
        ("ssh://pi@10.0.0.7:2222", SshDevice, {"user": "pi", "host": "10.0.0.7", "port": 2222}),
        ("ssh://root@[::1]:22", SshDevice, {"user": "root", "host": "::1", "port": 22}),
        ("ssh://board", SshDevice, {"user": None, "host": "board"}),
        ("adb", AdbDevice, {"serial": None}),
        ("adb:R58M12ABC", AdbDevice, {"serial": "R58M12ABC"}),
        ("adb:192.168.1.5:5555", AdbDevice, {"serial": "192.168.1.5:5555"}),
    ],
)
def test_parse_device_url_accepts_valid_forms(spec, kind, fields):
    device = parse_device_url(spec)
    assert isinstance(device, kind)
    for name, value in fields.items():
        assert getattr(device, name) == value


def test_parse_device_url_passes_ssh_options():
    device = parse_device_url(
        "ssh://pi@board:2200",
        identity_file="/k/id",
        known_hosts_file="/k/known",
        strict_host_key_checking="yes",
        ssh_options=["Compression=yes"],
    )
    assert isinstance(device, SshDevice)
    argv = device.ssh_argv()
    assert argv[-2:] == ["--", "pi@board"]
    assert argv[argv.index("-p") : argv.index("-p") + 2] == ["-p", "2200"]
    assert "/k/id" in argv
    for option in (
        "BatchMode=yes",
        "StrictHostKeyChecking=yes",
        "UserKnownHostsFile=/k/known",
        "Compression=yes",
        "ServerAliveInterval=5",
        "ConnectTimeout=10",
    ):
        assert option in argv
    assert argv.index("Compression=yes") < argv.index("BatchMode=yes")  # user options win


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "pi@raspberrypi",
        "ssh://",
        "ssh://pi@host/path",
        "ssh://pi:secret@host",
        "ssh://pi@host:99999",
        "ssh://-oProxyCommand=x",
        "ssh://-x@host",
        "adb:",
        "usb:1234",
        "telnet://host",
    ],
)
def test_parse_device_url_rejects_other_forms_listing_valid_ones(spec):
    with pytest.raises(DeviceError) as caught:
        parse_device_url(spec)
    assert caught.value.reason == "bad-spec"
    if spec.startswith("ssh://-"):
        return  # rejected by the host/user check, which names the bad part
    for form in ("`local`", "`ssh://user@host[:port]`", "`adb`", "`adb:SERIAL`"):
        assert form in str(caught.value)


def test_bad_strict_host_key_checking_is_named():
    with pytest.raises(DeviceError, match="strict_host_key_checking"):
        SshDevice("h", strict_host_key_checking="maybe")


@pytest.mark.parametrize(
    ("binary", "uname_m", "ok"),
    [
        ("aarch64", "aarch64", True),
        ("arm", "aarch64", True),
        ("arm", "armv7l", True),
        ("aarch64", "x86_64", False),
        ("aarch64", "armv7l", False),
        ("x86_64", "aarch64", False),
        (None, "aarch64", True),
        ("aarch64", None, True),
    ],
)
def test_can_run_compares_binary_and_device_arch(binary, uname_m, ok):
    assert can_run(binary, uname_m) is ok


def test_elf_arch_reads_this_python_and_ignores_scripts(tmp_path):
    expected = {"x86_64": "x86_64", "aarch64": "aarch64"}.get(os.uname().machine)
    if expected:
        assert elf_arch(os.path.realpath(sys.executable)) == expected
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    assert elf_arch(script) is None
