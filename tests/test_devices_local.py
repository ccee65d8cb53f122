"""LocalDevice, the temp-dir guarantee, and the benchmark/worker flows on this machine."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from bnn_export.devices import (
    DeviceError,
    LocalDevice,
    run_lce_benchmark,
    run_remote_worker,
)

STANDINS = Path(__file__).parent / "standins"
STANDIN_BENCHMARK = str(STANDINS / "lce_benchmark_model")


@pytest.fixture
def device(tmp_path: Path) -> LocalDevice:
    (tmp_path / "device").mkdir()
    return LocalDevice(temp_root=str(tmp_path / "device"))


def leftovers(device: LocalDevice) -> list[str]:
    assert device.temp_root is not None
    return os.listdir(device.temp_root)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "tiny model.tflite"
    path.write_bytes(os.urandom(4096))
    return path


def test_local_info_describes_this_machine(device):
    info = device.info()
    assert info["transport"] == "local"
    assert info["arch"] == os.uname().machine
    assert info["cores"] == os.cpu_count()


def test_temp_dir_removed_on_success_error_and_ctrl_c(device, model):
    with device.temp_dir() as tmp:
        device.push(str(model), f"{tmp}/m.tflite")
        assert os.listdir(tmp) == ["m.tflite"]
    for exc in (ValueError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), device.temp_dir() as tmp:
            device.push(str(model), f"{tmp}/m.tflite")
            raise exc
    assert leftovers(device) == []


def test_run_timeout_is_a_device_error_within_the_limit(device):
    start = time.monotonic()
    with pytest.raises(DeviceError) as caught, device.temp_dir() as tmp:
        device.run(["sleep", "30"], timeout=0.5, cwd=tmp)
    assert caught.value.reason == "timeout"
    assert "--timeout" in str(caught.value)
    assert time.monotonic() - start < 5
    assert leftovers(device) == []


def test_missing_and_non_executable_binaries(device, tmp_path):
    with pytest.raises(DeviceError) as caught:
        device.run([str(tmp_path / "nope")], timeout=5)
    assert caught.value.reason == "missing-binary"
    plain = tmp_path / "plain"
    plain.write_text("#!/bin/sh\n")
    with pytest.raises(DeviceError) as caught:
        device.run([str(plain)], timeout=5)
    assert caught.value.reason == "not-executable"
    assert "chmod +x" in str(caught.value)


def test_ctrl_c_during_a_run_kills_it_and_cleans_up(device, tmp_path):
    marker = tmp_path / "still-running"
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt), device.temp_dir() as tmp:
        device.run(["sh", "-c", f"sleep 1.5; touch '{marker}'"], timeout=30, cwd=tmp)
    timer.join()
    assert time.monotonic() - start < 1.5
    time.sleep(1.5)
    assert not marker.exists(), "the interrupted command kept running"
    assert leftovers(device) == []


def test_cleanup_failure_is_reported_without_hiding_the_first_error(model, tmp_path):
    class StickyDevice(LocalDevice):
        def remove(self, remote_path: str) -> None:
            raise DeviceError("cleanup-failed", "read-only file system")

    device = StickyDevice(temp_root=str(tmp_path))
    with pytest.raises(ValueError) as caught, device.temp_dir():
        raise ValueError("the real problem")
    assert "could not be removed" in " ".join(caught.value.__notes__)
    with pytest.raises(DeviceError) as cleanup, device.temp_dir():
        pass
    assert cleanup.value.reason == "cleanup-failed"
    assert "remove it by hand" in str(cleanup.value)


def test_local_lce_benchmark_with_standin_binary(device, model):
    result = run_lce_benchmark(
        device, model, binary=STANDIN_BENCHMARK, num_runs=7, warmup_runs=2, timeout=60
    )
    latency = result["latency_us"]
    assert latency["count"] == 7
    assert latency["min"] <= latency["mean"] <= latency["max"]
    assert result["emulated"] is False and result["note"] is None
    assert result["model"]["name"] == "tiny model.tflite"
    assert result["model"]["bytes"] == 4096
    assert leftovers(device) == []


def test_local_lce_benchmark_failure_quotes_the_tool(device, tmp_path):
    not_a_model = tmp_path / "x.tflite"
    not_a_model.write_bytes(b"")
    failing = tmp_path / "failing_benchmark"
    failing.write_text("#!/bin/sh\necho 'ERROR: Unconsumed cmdline flags' >&2\nexit 1\n")
    failing.chmod(0o755)
    with pytest.raises(DeviceError) as caught:
        run_lce_benchmark(device, not_a_model, binary=str(failing), timeout=30)
    assert caught.value.reason == "command-failed"
    assert "Unconsumed cmdline flags" in str(caught.value)
    assert leftovers(device) == []


WORKER = (
    "import json, os, sys; "
    "print('log line'); "
    "print(json.dumps({'files': sorted(os.listdir('.')), 'arg': sys.argv[1]}))"
)


def test_local_remote_worker_returns_json_from_stdout(device, model):
    result = run_remote_worker(
        device, {"renamed.tflite": model}, [sys.executable, "-c", WORKER, "{tmp}/x"], timeout=30
    )
    assert result["files"] == ["renamed.tflite"]
    assert result["arg"].endswith("/x") and result["arg"].startswith(device.temp_root)
    assert result["emulated"] is False
    assert leftovers(device) == []


def test_local_remote_worker_reads_result_file(device, model):
    code = "import json; json.dump({'ok': True}, open('out.json', 'w'))"
    result = run_remote_worker(
        device, [model], [sys.executable, "-c", code], timeout=30, result_file="out.json"
    )
    assert result == {"ok": True, "emulated": False}
    assert leftovers(device) == []


@pytest.mark.parametrize(
    ("code", "reason", "text"),
    [
        ("print('no json here')", "bad-output", "no json here"),
        ("import sys; print('crash', file=sys.stderr); sys.exit(3)", "command-failed", "crash"),
    ],
)
def test_local_remote_worker_errors(device, model, code, reason, text):
    with pytest.raises(DeviceError) as caught:
        run_remote_worker(device, [model], [sys.executable, "-c", code], timeout=30)
    assert caught.value.reason == reason
    assert text in str(caught.value)
    assert leftovers(device) == []


def test_remote_worker_payload_is_json_serialisable(device, model):
    result = run_remote_worker(device, [model], [sys.executable, "-c", WORKER, "a"], timeout=30)
    json.dumps(result)
