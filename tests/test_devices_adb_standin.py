"""AdbDevice against the STAND-IN adb in tests/standins (no phone involved).

The stand-in maps the device's /data/local/tmp to a test folder and runs "device" commands in
the host's /bin/sh, so these tests check our adb command lines, quoting, error mapping and
cleanup, not Android itself.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from bnn_export.devices import AdbDevice, DeviceError, parse_device_url, run_lce_benchmark

STANDINS = Path(__file__).parent / "standins"
STANDIN_ADB = str(STANDINS / "adb")
STANDIN_BENCHMARK = str(STANDINS / "lce_benchmark_model")


@pytest.fixture
def device_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in phone's /data/local/tmp."""
    folder = tmp_path / "data-local-tmp"
    folder.mkdir()
    monkeypatch.setenv("BNN_STANDIN_ADB_TMP", str(folder))
    monkeypatch.setenv("BNN_EXPORT_ADB", STANDIN_ADB)
    monkeypatch.setenv("BNN_STANDIN_ADB_DEVICES", "standin-0001")
    monkeypatch.delenv("BNN_STANDIN_ADB_FREE_BYTES", raising=False)
    return folder


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "phone model.tflite"
    path.write_bytes(os.urandom(8192))
    return path


def test_adb_standin_info_reads_getprop(device_tmp):
    info = parse_device_url("adb").info()
    assert info["transport"] == "adb"
    assert info["serial"] == "standin-0001"
    assert info["model"] == "Standin Phone (not a real device)"
    assert (info["abi"], info["android_release"], info["os"]) == ("arm64-v8a", "14", "Android 14")
    assert info["cores"] == os.cpu_count()


def test_adb_standin_lce_benchmark_full_flow_pushes_binary(device_tmp, model):
    device = parse_device_url("adb:standin-0001")
    taskset = "1" if shutil.which("taskset") else None
    result = run_lce_benchmark(
        device,
        model,
        binary=STANDIN_BENCHMARK,
        num_runs=6,
        warmup_runs=2,
        num_threads=4,
        taskset=taskset,
        timeout=60,
    )
    command = result["command"]
    assert command[:2] == (["taskset", "1"] if taskset else command[:2])
    binary = next(arg for arg in command if arg.endswith("/lce_benchmark_model"))
    assert binary.startswith("/data/local/tmp/bnn-export-")  # pushed, then run from the device
    assert "--graph=/data/local/tmp/" in " ".join(command)
    assert result["latency_us"]["count"] == 6
    assert result["device"]["abi"] == "arm64-v8a"
    assert result["emulated"] is False
    assert os.listdir(device_tmp) == []


def test_adb_standin_quoting_and_odd_file_names(device_tmp, tmp_path):
    device = AdbDevice()
    source = tmp_path / "src"
    source.write_bytes(b"\x00\xffdata")
    names = ["a b", "semi;colon", "dollar$HOME", "quote'it", "star*"]
    with device.temp_dir() as tmp:
        assert tmp.startswith("/data/local/tmp/bnn-export-")
        for name in names:
            device.push(str(source), f"{tmp}/{name}")
        result = device.run(["ls", "-1", "--", *names], timeout=30, cwd=tmp)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == sorted(names)
        device.pull(f"{tmp}/quote'it", str(tmp_path / "back"))
        assert (tmp_path / "back").read_bytes() == b"\x00\xffdata"
        echoed = device.run(["printf", "%s|", "$(id)", "`id`", "x y"], timeout=30)
        assert echoed.stdout == "$(id)|`id`|x y|"
    assert os.listdir(device_tmp) == []


def test_adb_standin_no_device_connected(device_tmp, monkeypatch):
    monkeypatch.setenv("BNN_STANDIN_ADB_DEVICES", "")
    with pytest.raises(DeviceError) as caught:
        AdbDevice().info()
    assert caught.value.reason == "no-device"
    assert "USB debugging" in str(caught.value)


def test_adb_standin_serial_not_found_lists_connected(device_tmp, monkeypatch):
    monkeypatch.setenv("BNN_STANDIN_ADB_DEVICES", "alpha,beta")
    with pytest.raises(DeviceError) as caught:
        AdbDevice("gamma").make_temp_dir()
    assert caught.value.reason == "no-device"
    assert "alpha, beta" in str(caught.value)
    with pytest.raises(DeviceError, match="pick one with adb:SERIAL"):
        AdbDevice().info()


def test_adb_standin_offline_and_unauthorized(device_tmp, monkeypatch):
    monkeypatch.setenv("BNN_STANDIN_ADB_DEVICES", "off:offline,locked:unauthorized")
    with pytest.raises(DeviceError) as caught:
        AdbDevice("off").info()
    assert caught.value.reason == "connection-lost"
    with pytest.raises(DeviceError) as caught:
        AdbDevice("locked").info()
    assert caught.value.reason == "auth"
    assert "USB debugging prompt" in str(caught.value)


def test_adb_standin_device_unplugged_after_check(device_tmp, monkeypatch):
    device = AdbDevice()
    with pytest.raises(DeviceError) as caught, device.temp_dir() as tmp:
        monkeypatch.setenv("BNN_STANDIN_ADB_DEVICES", "")  # the cable is pulled
        device.run(["true"], timeout=30, cwd=tmp)
    assert caught.value.reason == "connection-lost"
    assert "adb reconnect" in str(caught.value)
    assert "could not be removed" in " ".join(caught.value.__notes__)  # and it says where


def test_adb_standin_disk_full(device_tmp, model, monkeypatch):
    monkeypatch.setenv("BNN_STANDIN_ADB_FREE_BYTES", "1000")  # simulated: the model is 8 KiB
    with pytest.raises(DeviceError) as caught:
        run_lce_benchmark(AdbDevice(), model, binary=STANDIN_BENCHMARK, timeout=30)
    assert caught.value.reason == "disk-full"
    assert os.listdir(device_tmp) == []


def test_adb_standin_timeout(device_tmp):
    device = AdbDevice()
    start = time.monotonic()
    with pytest.raises(DeviceError) as caught, device.temp_dir() as tmp:
        device.run(["sleep", "30"], timeout=1, cwd=tmp)
    assert caught.value.reason == "timeout"
    assert time.monotonic() - start < 8
    assert os.listdir(device_tmp) == []


def test_adb_standin_missing_binary_on_device(device_tmp, model):
    with pytest.raises(DeviceError) as caught:
        run_lce_benchmark(
            AdbDevice(), model, binary="/data/local/tmp/lce_benchmark_model", timeout=30
        )
    assert caught.value.reason == "missing-binary"
    assert os.listdir(device_tmp) == []


def test_adb_executable_missing(tmp_path):
    with pytest.raises(DeviceError) as caught:
        AdbDevice(adb_path=str(tmp_path / "no-adb")).info()
    assert caught.value.reason == "tool-missing"
    assert "BNN_EXPORT_ADB" in str(caught.value)
