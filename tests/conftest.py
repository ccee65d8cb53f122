from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bnn_export.runtime import native
from tests.sshd_server import start_sshd

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# A test run started in the background by a non-interactive shell (`make test &`, nohup)
# inherits SIGINT ignored, and so would every CLI it spawns: the Ctrl-C tests would then
# test nothing. Install Python's handler so this process and its children take SIGINT.
signal.signal(signal.SIGINT, signal.default_int_handler)


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run `bnn-export ARGS` in a subprocess (exit codes and stderr as a user sees them)."""
    return subprocess.run(
        [sys.executable, "-m", "bnn_export", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


def write_cifar_fixture(root: Path, n_train: int = 24, n_test: int = 12, seed: int = 0) -> Path:
    """A tiny CIFAR-10 folder in the real python-pickle batch format."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("data_batch_1", n_train), ("test_batch", n_test)):
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img{i}.png".encode() for i in range(n)],
        }
        with (root / name).open("wb") as f:
            pickle.dump(batch, f, protocol=2)
    return root


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    return write_cifar_fixture(tmp_path / "cifar-10-batches-py")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    """A real sshd on 127.0.0.1 (see tests/sshd_server.py); skips without OpenSSH."""
    yield from start_sshd(tmp_path_factory)


@pytest.fixture(scope="session")
def aarch64_benchmark(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The stand-in benchmark (tests/standins/fake_lce_benchmark.c) built for aarch64."""
    missing = [t for t in ("qemu-aarch64-static", "aarch64-linux-gnu-gcc") if not shutil.which(t)]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed: apt-get install qemu-user-static "
            "gcc-aarch64-linux-gnu"
        )
    binary = tmp_path_factory.mktemp("arm") / "fake_lce_benchmark"
    subprocess.run(
        [
            "aarch64-linux-gnu-gcc",
            "-static",
            "-O2",
            "-o",
            str(binary),
            str(Path(__file__).parent / "standins" / "fake_lce_benchmark.c"),
            "-lm",
        ],
        check=True,
        timeout=120,
    )
    return str(binary)


@pytest.fixture(scope="session")
def bench_artifacts(tmp_path_factory: pytest.TempPathFactory):
    """A run dir, its three .onnx exports and a tiny LCE .tflite (see tests/bench_artifacts.py)."""
    from tests.bench_artifacts import Artifacts

    return Artifacts(tmp_path_factory.mktemp("bench artifacts"))


# ------------------------------------------------------------ native kernel variant
# `BNN_KERNEL=avx2 ONEDNN_MAX_CPU_ISA=AVX2 make test` (`make test-avx2`) runs the suite as a
# machine without AVX-512 would (docs/testing.md). Tests that force a variant
# (native.forced_kernel / set_kernel) must not leave another one behind for the tests after
# them: every test ends with the variant BNN_KERNEL asks for (else the best, "auto").


def _requested_kernel() -> str:
    return os.environ.get("BNN_KERNEL") or "auto"


def pytest_report_header(config: pytest.Config) -> list[str]:
    try:
        name = native.kernel_name()
        available = ",".join(native.available_kernels())
    except (native.NativeLibraryError, native.KernelError) as exc:
        return [f"bnn kernel: {exc}"]
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "unset")
    ov_isa = os.environ.get("OV_CPU_MAX_ISA") or isa  # openvino_core derives it from isa
    return [
        f"bnn kernel: {name} (BNN_KERNEL={_requested_kernel()}, available: {available}); "
        f"ONEDNN_MAX_CPU_ISA={isa}; OV_CPU_MAX_ISA={ov_isa}"
    ]


def pytest_sessionstart(session: pytest.Session) -> None:
    """A BNN_KERNEL this CPU cannot honour fails the run at once, with the reason, rather
    than as hundreds of failing conversions."""
    if _requested_kernel() == "auto":
        return
    try:
        native.set_kernel(_requested_kernel())
    except native.NativeLibraryError:
        return  # reported by the tests that need the library
    except native.KernelError as exc:
        raise pytest.UsageError(f"BNN_KERNEL={_requested_kernel()}: {exc}") from None


@pytest.fixture(autouse=True)
def _kernel_variant_restored() -> Iterator[None]:
    yield
    if native._lib.cache_info().currsize:  # the library is loaded in this process
        native.set_kernel(_requested_kernel())
