"""SshDevice against a REAL OpenSSH server started on 127.0.0.1 by the fixture.

Also the "ARM flavour": a static aarch64 stand-in benchmark run through qemu-aarch64-static on
the ssh device, whose results must say they are emulated. No traffic leaves loopback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bnn_export.devices import (
    DeviceError,
    LocalDevice,
    SshDevice,
    run_lce_benchmark,
    run_remote_worker,
)
from bnn_export.devices.elf_arch import elf_arch
from tests.sshd_server import Sshd, free_port, keygen, session_processes

STANDINS = Path(__file__).parent / "standins"
STANDIN_BENCHMARK = str(STANDINS / "lce_benchmark_model")

# Names that break naive quoting: spaces, ;, $, quotes, globs, a leading dash, a newline.
ODD_NAMES = [
    "with space.tflite",
    "semi;colon",
    "dollar$HOME",
    "sub$(echo x)",
    "quote'single",
    'quote"double',
    "back`tick`\\slash",
    "-leading-dash",
    "star*glob?",
    "new\nline",
]


@pytest.fixture
def remote_root(tmp_path: Path) -> Path:
    """The device's temp root; each test checks it is empty afterwards."""
    root = tmp_path / "remote tmp"
    root.mkdir()
    return root


def make_device(sshd: Sshd, remote_root: Path, **overrides) -> SshDevice:
    options = {
        "user": sshd.user,
        "port": sshd.port,
        "identity_file": sshd.key,
        "known_hosts_file": sshd.known_hosts,
        "strict_host_key_checking": "yes",
        "ssh_config": os.devnull,
        "temp_root": str(remote_root),
        "connect_timeout": 5,
        **overrides,
    }
    return SshDevice("127.0.0.1", **options)


@pytest.fixture
def device(sshd: Sshd, remote_root: Path) -> SshDevice:
    return make_device(sshd, remote_root)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "my model.tflite"
    path.write_bytes(os.urandom(64 * 1024))
    return path


def test_ssh_info(device):
    info = device.info()
    assert info["transport"] == "ssh"
    assert info["target"] == f"ssh://{device.user}@127.0.0.1:{device.port}"
    assert info["arch"] == os.uname().machine
    assert info["cores"] == os.cpu_count()
    assert info["kernel"].startswith("Linux")
    assert info["cpu_model"]


def test_ssh_push_pull_round_trip_with_odd_names(device, remote_root, tmp_path):
    payload = bytes(range(256)) * 64
    source = tmp_path / "payload.bin"
    source.write_bytes(payload)
    with device.temp_dir() as tmp:
        for name in ODD_NAMES:
            device.push(str(source), f"{tmp}/{name}")
        # Exactly these names exist on the "device": nothing was expanded or split.
        assert sorted(os.listdir(tmp)) == sorted(ODD_NAMES)
        # Each ssh command costs a login (~0.4 s here): pull back the nastiest few.
        for index, name in enumerate(ODD_NAMES[1::2]):
            back = tmp_path / f"back-{index}"
            device.pull(f"{tmp}/{name}", str(back))
            assert back.read_bytes() == payload
        with pytest.raises(DeviceError) as caught:
            device.pull(f"{tmp}/absent", str(tmp_path / "absent"))
        assert "No such file" in str(caught.value)
        assert not (tmp_path / "absent").exists()
    assert os.listdir(remote_root) == []


def test_ssh_run_quotes_every_argument(device, remote_root):
    args = [*ODD_NAMES, "", "a  b", "; touch pwned", "$(touch pwned)", "`touch pwned`", "*"]
    with device.temp_dir() as tmp:
        odd_dir = f"{tmp}/dir with 'quotes' & $vars"
        os.mkdir(odd_dir)
        result = device.run(["printf", "%s\\0", *args], timeout=30, cwd=odd_dir)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split("\0")[:-1] == args
        pwd = device.run(["pwd"], timeout=30, cwd=odd_dir)
        assert pwd.stdout.strip() == odd_dir
        assert os.listdir(odd_dir) == []  # no injected `touch`
    assert os.listdir(remote_root) == []


def test_ssh_run_returns_exit_status_and_stderr(device):
    result = device.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=30)
    assert (result.stdout, result.stderr, result.returncode) == ("out\n", "err\n", 3)
    assert result.seconds > 0


def test_ssh_lce_benchmark_with_standin_binary(device, remote_root, model):
    result = run_lce_benchmark(
        device,
        model,
        binary=STANDIN_BENCHMARK,
        num_threads=2,
        num_runs=9,
        warmup_runs=3,
        use_indirect_bgemm=True,
        timeout=60,
    )
    latency = result["latency_us"]
    assert latency["count"] == 9
    assert latency["min"] <= latency["p50"] <= latency["max"]
    assert latency["inference_mean"] == pytest.approx(latency["mean"], rel=1e-3)
    assert result["device"]["transport"] == "ssh"
    assert result["emulated"] is False
    assert "--use_indirect_bgemm=true" in result["command"]
    assert "--num_threads=2" in result["command"]
    assert result["model"]["name"] == "my model.tflite"
    assert os.listdir(remote_root) == []


def test_ssh_remote_worker_json(device, remote_root, model):
    code = (
        "import json, os; "
        "print(json.dumps({'files': os.listdir('.'), 'size': os.path.getsize('my model.tflite')}))"
    )
    result = run_remote_worker(device, [model], ["python3", "-c", code], timeout=30)
    assert result == {"files": ["my model.tflite"], "size": 64 * 1024, "emulated": False}
    assert os.listdir(remote_root) == []


# ---------------------------------------------------------------- faults


def test_ssh_unreachable_host(sshd, remote_root, model):
    device = make_device(sshd, remote_root, port=free_port())
    start = time.monotonic()
    with pytest.raises(DeviceError) as caught:
        run_lce_benchmark(device, model, binary=STANDIN_BENCHMARK, timeout=30)
    assert caught.value.reason == "unreachable"
    assert "Connection refused" in str(caught.value)
    assert "sshd runs on it" in str(caught.value)
    assert time.monotonic() - start < 10


def test_ssh_auth_failure_with_wrong_key(sshd, remote_root, model):
    device = make_device(sshd, remote_root, identity_file=sshd.wrong_key)
    with pytest.raises(DeviceError) as caught:
        run_lce_benchmark(device, model, binary=STANDIN_BENCHMARK, timeout=30)
    assert caught.value.reason == "auth"
    assert "authorized_keys" in str(caught.value)
    assert os.listdir(remote_root) == []


def test_ssh_changed_host_key_is_refused(sshd, remote_root, tmp_path):
    keygen(tmp_path / "other_host_key")
    kind, key = (tmp_path / "other_host_key.pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {kind} {key}\n")
    device = make_device(sshd, remote_root, known_hosts_file=str(known))
    with pytest.raises(DeviceError) as caught:
        device.info()
    assert caught.value.reason == "host-key"
    assert "ssh-keygen -R" in str(caught.value)
    assert "Host key verification failed" in str(caught.value)
    assert "NASTY" not in str(caught.value)  # ssh's banner is left out


def test_ssh_remote_command_timeout(device, remote_root):
    start = time.monotonic()
    with pytest.raises(DeviceError) as caught, device.temp_dir() as tmp:
        device.run(["sleep", "30"], timeout=1, cwd=tmp)
    assert caught.value.reason == "timeout"
    assert time.monotonic() - start < 8
    assert os.listdir(remote_root) == []


def test_ssh_missing_remote_binary(device, remote_root, model):
    with pytest.raises(DeviceError) as caught:
        run_lce_benchmark(device, model, binary="/opt/absent/lce_benchmark_model", timeout=30)
    assert caught.value.reason == "missing-binary"
    assert "/opt/absent/lce_benchmark_model" in str(caught.value)
    assert "--lce-benchmark-binary" in str(caught.value)
    assert os.listdir(remote_root) == []


def test_ssh_connection_killed_mid_run(sshd, device, remote_root):
    killed: list[int] = []

    def kill_session() -> None:
        deadline = time.monotonic() + 5
        while not killed and time.monotonic() < deadline:
            time.sleep(0.5)
            for pid in session_processes(sshd.process.pid):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    start = time.monotonic()
    with pytest.raises(DeviceError) as caught, device.temp_dir() as tmp:
        thread = threading.Thread(target=kill_session)
        thread.start()
        try:
            device.run(["sleep", "4"], timeout=30, cwd=tmp)
        finally:
            thread.join()
    assert killed, "no sshd session process was found to kill"
    assert caught.value.reason == "connection-lost"
    assert time.monotonic() - start < 4
    assert os.listdir(remote_root) == []
    assert sshd.process.poll() is None  # the listener survived; only the session died


def test_ssh_hung_link_is_detected_by_keepalives(sshd, remote_root):
    """The session's sshd is frozen (SIGSTOP): no FIN, no RST, only silence."""
    device = make_device(sshd, remote_root, server_alive_interval=1)
    frozen: list[int] = []

    def freeze_session() -> None:
        deadline = time.monotonic() + 5
        while not frozen and time.monotonic() < deadline:
            time.sleep(0.5)
            for pid in session_processes(sshd.process.pid):
                os.kill(pid, signal.SIGSTOP)
                frozen.append(pid)

    start = time.monotonic()
    try:
        with pytest.raises(DeviceError) as caught, device.temp_dir() as tmp:
            thread = threading.Thread(target=freeze_session)
            thread.start()
            try:
                device.run(["sleep", "8"], timeout=60, cwd=tmp)
            finally:
                thread.join()
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert frozen, "no sshd session process was found to freeze"
    assert caught.value.reason == "connection-lost"
    assert "stopped answering keepalives" in str(caught.value)
    assert time.monotonic() - start < 15  # 3 missed keepalives at 1 s, not the 60 s timeout
    assert os.listdir(remote_root) == []


def test_ssh_ctrl_c_during_run_cleans_up(device, remote_root):
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt), device.temp_dir() as tmp:
        device.run(["sleep", "3"], timeout=30, cwd=tmp)
    timer.join()
    assert os.listdir(remote_root) == []


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    mount_point = tmp_path / "tiny disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True, timeout=30)


def test_ssh_device_out_of_disk_on_a_tiny_tmpfs(sshd, tiny_tmpfs, model):
    """A real ENOSPC: the remote temp root is a 32 KiB tmpfs and the model is 64 KiB."""
    device = make_device(sshd, tiny_tmpfs)
    with pytest.raises(DeviceError) as caught:
        run_lce_benchmark(device, model, binary=STANDIN_BENCHMARK, timeout=30)
    assert caught.value.reason == "disk-full"
    assert "--remote-tmp" in str(caught.value)
    assert os.listdir(tiny_tmpfs) == []


# ---------------------------------------------------------------- ARM flavour (emulated)


def test_ssh_emulated_aarch64_benchmark_is_labelled_emulated(
    device, remote_root, model, aarch64_benchmark
):
    emulator = ["qemu-aarch64-static"]
    probe = device.run([*emulator, aarch64_benchmark, f"--graph={model}", "--num_runs=1"], 60)
    assert "Machine: [aarch64]" in probe.stdout  # really ARM code, run under emulation
    result = run_lce_benchmark(
        device,
        model,
        binary=aarch64_benchmark,
        num_runs=5,
        warmup_runs=1,
        timeout=60,
        emulator=emulator,
    )
    assert result["emulated"] is True
    assert result["emulator"] == emulator
    assert result["command"][0] == "qemu-aarch64-static"
    assert "NOT ARM latency" in result["note"]
    assert result["device"]["arch"] == os.uname().machine != "aarch64"
    assert result["latency_us"]["count"] == 5
    assert os.listdir(remote_root) == []


def test_ssh_emulated_remote_worker_is_labelled_emulated(
    device, remote_root, model, aarch64_benchmark
):
    result = run_remote_worker(
        device,
        {"bench": aarch64_benchmark},
        ["./bench", "--json", "--num_runs=3"],
        timeout=60,
        executables=["bench"],
        emulator=["qemu-aarch64-static"],
    )
    assert result["machine"] == "aarch64"
    assert result["mean_us"] > 0
    assert result["emulated"] is True
    assert "NOT ARM latency" in result["note"]
    assert os.listdir(remote_root) == []


def test_arm_binary_on_x86_without_emulator_is_refused(tmp_path, model, aarch64_benchmark):
    if os.uname().machine != "x86_64":
        pytest.skip("checks an aarch64 binary on an x86_64 host")
    (tmp_path / "device").mkdir()
    device = LocalDevice(temp_root=str(tmp_path / "device"))
    assert elf_arch(aarch64_benchmark) == "aarch64"
    with pytest.raises(DeviceError) as caught:
        run_lce_benchmark(device, model, binary=aarch64_benchmark, timeout=30)
    assert caught.value.reason == "wrong-arch"
    assert "not ARM latency" in str(caught.value)
    assert os.listdir(tmp_path / "device") == []
