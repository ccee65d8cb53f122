"""`bnn-export bench --device ssh://...` against the REAL loopback sshd (tests/sshd_server.py).

The .onnx path runs bnn-export's worker on the "device" with this venv's python; the .tflite
path runs the STAND-IN lce_benchmark_model (tests/standins), and, in the ARM flavour, the
stand-in built for aarch64 under qemu-aarch64-static (results must say emulated).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bnn_export.cli import main
from tests.sshd_server import free_port, session_processes

STANDIN_BENCHMARK = str(Path(__file__).parent / "standins" / "lce_benchmark_model")
FAST = ["--num-runs", "5", "--warmup-runs", "1", "--min-secs", "0", "--quiet"]
ODD = "my model; rm -rf x $(touch pwned)"


@pytest.fixture
def remote_root(tmp_path: Path) -> Path:
    root = tmp_path / "remote tmp; dir"
    root.mkdir()
    return root


def ssh_args(sshd, remote_root: Path, port: int | None = None) -> list[str]:
    return [
        "--device", f"ssh://{sshd.user}@127.0.0.1:{port or sshd.port}",
        "--ssh-identity", sshd.key, "--ssh-known-hosts", sshd.known_hosts,
        "--ssh-config", os.devnull, "--remote-tmp", str(remote_root),
    ]  # fmt: skip


def odd_copy(source: Path, folder: Path, suffix: str) -> Path:
    target = folder / f"{ODD}{suffix}"
    shutil.copyfile(source, target)
    return target


def bench(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["bench", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_bench_ssh_onnx_through_remote_worker(sshd, remote_root, bench_artifacts, tmp_path, capsys):
    model = odd_copy(bench_artifacts.onnx["onnxruntime"], tmp_path, ".onnx")
    out_json = tmp_path / "ssh.json"
    code, out, err = bench(capsys, str(model), str(bench_artifacts.onnx["openvino"]),
                           *ssh_args(sshd, remote_root), "--remote-python", sys.executable,
                           "--reference", str(bench_artifacts.run), "--max-eval", "60",
                           "--json", str(out_json), *FAST)  # fmt: skip
    assert code == 0, err
    rows = json.loads(out_json.read_text())["results"]
    assert [r["model"]["name"] for r in rows] == [model.name, "openvino.onnx"]
    # auto on the device picks the runtime by the target recorded in the file
    assert [r["runtime"]["name"] for r in rows] == ["onnxruntime", "openvino"]
    for row in rows:
        assert row["device"]["transport"] == "ssh" and row["device"]["emulated"] is False
        assert row["device"]["target"] == f"ssh://{sshd.user}@127.0.0.1:{sshd.port}"
        assert row["device"]["cores"] == os.cpu_count() and row["device"]["os"]
        assert row["runtime"]["worker"] == "bnn_export.runtime.worker"
        assert row["latency_us"]["count"] >= 5 and row["latency_us"]["p50"] > 0
        assert row["accuracy"]["measured_on"] == "device" and row["accuracy"]["samples"] == 60
        assert row["accuracy"]["agreement"] == 1.0
    assert f"ssh://{sshd.user}@127.0.0.1:{sshd.port}" in out.splitlines()[0]
    assert os.listdir(remote_root) == [] and not (tmp_path / "pwned").exists()


def test_bench_ssh_tflite_with_standin_lce_benchmark_model(
    sshd, remote_root, bench_artifacts, tmp_path, capsys
):
    model = odd_copy(bench_artifacts.tflite, tmp_path, ".tflite")
    report = tmp_path / "report"
    code, out, err = bench(capsys, str(model), *ssh_args(sshd, remote_root),
                           "--lce-benchmark-binary", STANDIN_BENCHMARK, "--num-threads", "4",
                           "--report", str(report), *FAST)  # fmt: skip
    assert code == 0, err
    row = json.loads((report / "bench.json").read_text())["results"][0]
    assert row["runtime"]["name"] == "lce_benchmark_model" and row["runtime"]["threads"] == 4
    assert "--num_threads=4" in row["runtime"]["command"]
    assert row["latency_us"]["count"] == 5
    assert row["latency_us"]["min"] <= row["latency_us"]["p50"] <= row["latency_us"]["max"]
    assert row["latency_us"]["p90"] is None  # not printed by the tool: never made up
    assert row["accuracy"] is None  # a foreign .tflite records no dataset and none was given
    assert row["device"]["emulated"] is False
    assert "4 threads" in (report / "bench.md").read_text().splitlines()[0]
    assert os.listdir(remote_root) == []


def test_bench_ssh_emulated_aarch64_is_never_labelled_arm_latency(
    sshd, remote_root, bench_artifacts, aarch64_benchmark, tmp_path, capsys
):
    report = tmp_path / "report"
    code, out, err = bench(capsys, str(bench_artifacts.tflite), *ssh_args(sshd, remote_root),
                           "--lce-benchmark-binary", aarch64_benchmark,
                           "--emulator", "qemu-aarch64-static", "--report", str(report), *FAST)  # fmt: skip
    assert code == 0, err
    row = json.loads((report / "bench.json").read_text())["results"][0]
    assert row["device"]["emulated"] is True
    assert row["device"]["emulator"] == ["qemu-aarch64-static"]
    assert "NOT ARM latency" in row["device"]["note"]
    assert row["device"]["arch"] == os.uname().machine != "aarch64"
    header = (report / "bench.md").read_text().splitlines()[0]
    assert "emulated, not ARM latency" in header
    assert os.listdir(remote_root) == []


def test_bench_ssh_onnx_worker_under_an_emulator_is_marked_emulated(
    sshd, remote_root, bench_artifacts, tmp_path, capsys
):
    """--emulator prefixes the worker command too. A stand-in "emulator" (a script that notes
    its call and runs its arguments) keeps this fast; the real thing, the aarch64 userland's
    python under qemu-aarch64-static, is tests/test_arm_userland.py (opt-in: needs a rootfs)."""
    calls = tmp_path / "emulator calls"
    emulator = tmp_path / "fake qemu"
    emulator.write_text(f'#!/bin/sh\necho "$*" >> {shlex.quote(str(calls))}\n'
                        '[ "$1" = -L ] && shift 2\nexec "$@"\n')  # fmt: skip
    emulator.chmod(0o755)
    report = tmp_path / "report"
    code, out, err = bench(capsys, str(bench_artifacts.onnx["onnxruntime"]),
                           *ssh_args(sshd, remote_root), "--remote-python", sys.executable,
                           "--emulator", shlex.join([str(emulator), "-L", "/"]),
                           "--reference", str(bench_artifacts.run), "--max-eval", "20",
                           "--report", str(report), *FAST)  # fmt: skip
    assert code == 0, err
    row = json.loads((report / "bench.json").read_text())["results"][0]
    assert row["device"]["emulated"] is True
    assert row["device"]["emulator"] == [str(emulator), "-L", "/"]
    assert "NOT ARM latency" in row["device"]["note"]
    assert calls.read_text().startswith(f"-L / {sys.executable} -m bnn_export.runtime.worker")
    assert row["runtime"]["worker"] == "bnn_export.runtime.worker"
    assert row["accuracy"]["measured_on"] == "device" and row["accuracy"]["agreement"] == 1.0
    assert "emulated, not ARM latency" in (report / "bench.md").read_text().splitlines()[0]
    assert os.listdir(remote_root) == []


def test_bench_emulator_for_a_local_onnx_is_refused(bench_artifacts, capsys):
    code, _, err = bench(capsys, str(bench_artifacts.onnx["onnxruntime"]),
                         "--emulator", "qemu-aarch64-static", *FAST)  # fmt: skip
    assert code == 2 and "--emulator" in err and "ssh device" in err


# ---------------------------------------------------------------- faults


def assert_clean_failure(code: int, err: str, reason: str, report: Path, remote_root: Path) -> None:
    assert code == 2, err
    lines = err.splitlines()
    assert lines[0].startswith(f"error: [{reason}]"), err
    assert not any(line.startswith("error:") for line in lines[1:]) and "Traceback" not in err
    assert not report.exists()  # no partial report files
    assert os.listdir(remote_root) == []  # no remote temp files


def test_bench_ssh_unreachable_host(sshd, remote_root, bench_artifacts, tmp_path, capsys):
    report = tmp_path / "report"
    start = time.monotonic()
    code, _, err = bench(capsys, str(bench_artifacts.tflite), *ssh_args(sshd, remote_root, free_port()),
                         "--lce-benchmark-binary", STANDIN_BENCHMARK, "--report", str(report), *FAST)  # fmt: skip
    assert_clean_failure(code, err, "unreachable", report, remote_root)
    assert time.monotonic() - start < 15


def test_bench_ssh_remote_command_timeout(sshd, remote_root, bench_artifacts, tmp_path, capsys):
    slow_python = tmp_path / "slow python"
    slow_python.write_text("#!/bin/sh\nsleep 30\n")
    slow_python.chmod(0o755)
    report = tmp_path / "report"
    start = time.monotonic()
    code, _, err = bench(capsys, str(bench_artifacts.onnx["onnxruntime"]), *ssh_args(sshd, remote_root),
                         "--remote-python", str(slow_python), "--timeout", "2", "--max-eval", "10",
                         "--report", str(report), *FAST)  # fmt: skip
    assert_clean_failure(code, err, "timeout", report, remote_root)
    assert "--timeout" in err
    assert time.monotonic() - start < 20


def test_bench_ssh_missing_lce_benchmark_binary(
    sshd, remote_root, bench_artifacts, tmp_path, capsys
):
    report = tmp_path / "report"
    code, _, err = bench(capsys, str(bench_artifacts.tflite), *ssh_args(sshd, remote_root),
                         "--lce-benchmark-binary", "/opt/absent dir/lce_benchmark_model",
                         "--report", str(report), *FAST)  # fmt: skip
    assert_clean_failure(code, err, "missing-binary", report, remote_root)
    assert "--lce-benchmark-binary" in err


def test_bench_ssh_tflite_without_benchmark_binary_is_refused_before_connecting(
    sshd, remote_root, bench_artifacts, capsys
):
    code, _, err = bench(capsys, str(bench_artifacts.tflite), *ssh_args(sshd, remote_root), *FAST)
    assert code == 2 and "--lce-benchmark-binary" in err


def test_bench_ssh_connection_killed_mid_run(sshd, remote_root, bench_artifacts, tmp_path, capsys):
    slow_python = tmp_path / "slow python"
    slow_python.write_text("#!/bin/sh\nsleep 6\n")
    slow_python.chmod(0o755)
    model = bench_artifacts.onnx["onnxruntime"]
    killed: list[int] = []

    def kill_worker_session() -> None:
        deadline = time.monotonic() + 20
        while not killed and time.monotonic() < deadline:
            time.sleep(0.2)
            if not any(".onnx" in name for name in _listing(remote_root)):
                continue  # the files are still being copied
            time.sleep(0.5)  # the worker command has started
            for pid in session_processes(sshd.process.pid):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    report = tmp_path / "report"
    thread = threading.Thread(target=kill_worker_session)
    thread.start()
    try:
        code, _, err = bench(capsys, str(model), *ssh_args(sshd, remote_root),
                             "--remote-python", str(slow_python), "--report", str(report), *FAST)  # fmt: skip
    finally:
        thread.join()
    assert killed, "no sshd session process was found to kill"
    assert_clean_failure(code, err, "connection-lost", report, remote_root)
    assert sshd.process.poll() is None


def _listing(root: Path) -> list[str]:
    names = []
    for _, _, files in os.walk(root):
        names += files
    return names


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    mount_point = tmp_path / "tiny disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True, timeout=30)


def test_bench_ssh_device_out_of_disk(sshd, tiny_tmpfs, bench_artifacts, tmp_path, capsys):
    """A real ENOSPC: the remote temp root is a 64 KiB tmpfs, the openvino .onnx is ~360 KiB."""
    report = tmp_path / "report"
    code, _, err = bench(capsys, str(bench_artifacts.onnx["openvino"]), *ssh_args(sshd, tiny_tmpfs),
                         "--remote-python", sys.executable, "--report", str(report), *FAST)  # fmt: skip
    assert_clean_failure(code, err, "disk-full", report, tiny_tmpfs)
    assert "--remote-tmp" in err


def test_bench_ssh_auth_failure(sshd, remote_root, bench_artifacts, tmp_path, capsys):
    report, json_out = tmp_path / "report", tmp_path / "out.json"
    args = ssh_args(sshd, remote_root)
    args[args.index(sshd.key)] = sshd.wrong_key
    code, _, err = bench(capsys, str(bench_artifacts.tflite), *args,
                         "--lce-benchmark-binary", STANDIN_BENCHMARK, "--report", str(report),
                         "--json", str(json_out), *FAST)  # fmt: skip
    assert_clean_failure(code, err, "auth", report, remote_root)
    assert "--ssh-identity" in err and not json_out.exists()
