"""`bnn-export bench --device adb` against the STAND-IN adb and lce_benchmark_model.

tests/standins/adb plays a phone whose /data/local/tmp is a test folder, so these tests check
bench's adb flow (push, chmod, run, getprop, cleanup), not Android itself.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bnn_export.cli import main

STANDINS = Path(__file__).parent / "standins"
FAST = ["--num-runs", "4", "--warmup-runs", "1", "--min-secs", "0", "--quiet"]


@pytest.fixture
def phone_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "data-local-tmp"
    folder.mkdir()
    monkeypatch.setenv("BNN_STANDIN_ADB_TMP", str(folder))
    monkeypatch.setenv("BNN_EXPORT_ADB", str(STANDINS / "adb"))
    monkeypatch.setenv("BNN_STANDIN_ADB_DEVICES", "standin-0001")
    monkeypatch.delenv("BNN_STANDIN_ADB_FREE_BYTES", raising=False)
    return folder


def bench(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["bench", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_bench_adb_standin_tflite_pushes_binary_and_reads_getprop(
    phone_tmp, bench_artifacts, tmp_path, capsys
):
    model = tmp_path / "phone model; v2.tflite"
    shutil.copyfile(bench_artifacts.tflite, model)
    out_json = tmp_path / "adb.json"
    taskset = ["--taskset", "1"] if shutil.which("taskset") else []
    code, out, err = bench(capsys, str(model), "--device", "adb:standin-0001",
                           "--lce-benchmark-binary", str(STANDINS / "lce_benchmark_model"),
                           *taskset, "--json", str(out_json), *FAST)  # fmt: skip
    assert code == 0, err
    row = json.loads(out_json.read_text())["results"][0]
    device = row["device"]
    assert (device["transport"], device["serial"], device["abi"]) == (
        "adb",
        "standin-0001",
        "arm64-v8a",
    )
    assert device["os"] == "Android 14" and device["emulated"] is False
    command = row["runtime"]["command"]
    assert command[:2] == (["taskset", "1"] if taskset else command[:2])
    assert any(arg.startswith("/data/local/tmp/bnn-export-") for arg in command)
    assert row["latency_us"]["count"] == 4
    assert "adb" in out.splitlines()[0]
    assert os.listdir(phone_tmp) == []


def test_bench_adb_standin_without_device_is_a_clear_error(
    phone_tmp, bench_artifacts, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("BNN_STANDIN_ADB_DEVICES", "")
    report = tmp_path / "report"
    code, _, err = bench(capsys, str(bench_artifacts.tflite), "--device", "adb",
                         "--lce-benchmark-binary", str(STANDINS / "lce_benchmark_model"),
                         "--report", str(report), *FAST)  # fmt: skip
    assert code == 2 and err.startswith("error: [no-device]")
    assert not report.exists() and os.listdir(phone_tmp) == []


def test_bench_adb_onnx_is_refused_with_the_way_out(phone_tmp, bench_artifacts, capsys):
    code, _, err = bench(capsys, str(bench_artifacts.onnx["onnxruntime"]), "--device", "adb", *FAST)
    assert code == 2 and "--format tflite" in err
