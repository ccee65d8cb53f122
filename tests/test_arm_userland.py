"""bnn-export's sdist installed in an aarch64 Debian userland, run under qemu (issue #6).

The userland is a stand-in for a Raspberry Pi (64-bit OS): `scripts/build-arm-userland.sh
DIR` makes it (Debian bookworm arm64, python3.11, gcc/g++, a venv with numpy, onnx and
onnxruntime aarch64 wheels from PyPI). Building it takes many minutes, so these tests run
only when BNN_EXPORT_ARM_ROOTFS names a built one; `make test-arm` builds (or reuses)
.cache/arm-rootfs and runs them.

1. `setup.py sdist` here, `pip install SDIST[device]` in the userland (chroot: gcc and g++
   are aarch64 programs started through binfmt_misc). The libraries it built must be
   aarch64 ELF, offer the NEON kernel, and the lean install must lack torch, TensorFlow
   and the CLI's dependencies.
2. The custom-op library in the aarch64 onnxruntime, run under `qemu-aarch64-static -L
   ROOTFS`, equals the numpy reference bit for bit (NEON and portable kernels).
3. `bnn-export bench X.onnx --device ssh://...` against the loopback sshd, the worker run
   by the userland's python under qemu: rows marked emulated, never ARM latency.

Everything measured under qemu is emulated: correctness is real, timings are not ARM's.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from bnn_export.devices.elf_arch import elf_arch

ROOT = Path(__file__).resolve().parents[1]
ENV = "BNN_EXPORT_ARM_ROOTFS"
VENV = "/opt/bnn-venv"  # inside the userland (scripts/build-arm-userland.sh)
QEMU = "qemu-aarch64-static"
BINFMT_ENTRY = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
FAST = ["--num-runs", "5", "--warmup-runs", "1", "--min-secs", "0", "--quiet"]
# The CLI's and the trainers' dependencies: a device install must not pull them.
NOT_ON_DEVICE = ("torch", "tensorflow", "tensorflow-cpu", "larq", "scikit-learn", "matplotlib",
                 "click", "openvino")  # fmt: skip

pytestmark = pytest.mark.skipif(
    not os.environ.get(ENV),
    reason=f"needs an aarch64 userland: `make test-arm` builds one (.cache/arm-rootfs, "
    f"~10 min the first time) and runs these tests; or set {ENV}=DIR made by "
    "scripts/build-arm-userland.sh",
)


@pytest.fixture(scope="module")
def rootfs() -> Path:
    """The userland named by the environment; a broken one fails (it was asked for)."""
    path = Path(os.environ[ENV]).resolve()
    python = path / VENV.lstrip("/") / "bin" / "python"
    problems = []
    if not (path / ".bnn-userland" / "venv.reqs").is_file() or not python.is_file():
        problems.append(f"{path} is not a finished userland (no {VENV} venv)")
    elif elf_arch(python) != "aarch64":
        problems.append(f"{python} is {elf_arch(python)}, not aarch64")
    if shutil.which(QEMU) is None:
        problems.append(f"{QEMU} missing (apt-get install qemu-user-static)")
    if os.geteuid() != 0:
        problems.append("installing into the userland needs root (chroot)")
    if not BINFMT_ENTRY.is_file() or "enabled" not in BINFMT_ENTRY.read_text():
        problems.append(
            "binfmt_misc has no enabled qemu-aarch64 entry (scripts/build-arm-userland.sh "
            "registers it)"
        )
    if problems:
        pytest.fail(
            f"{ENV}={os.environ[ENV]}: " + "; ".join(problems) + ". Run: bash "
            f"scripts/build-arm-userland.sh {path}"
        )
    return path


def in_chroot(rootfs: Path, *argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = ["/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
           "LANG=C.UTF-8", "PIP_DISABLE_PIP_VERSION_CHECK=1"]  # fmt: skip
    return subprocess.run(["chroot", str(rootfs), *env, *argv], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def emulated_python(rootfs: Path) -> list[str]:
    """The userland's python under qemu, without a chroot: host paths still resolve, so the
    worker can run in a host temp dir (qemu looks each absolute path up in ROOTFS first)."""
    return [QEMU, "-L", str(rootfs), str(rootfs / VENV.lstrip("/") / "bin" / "python")]


def device_env() -> dict[str, str]:
    """This process's environment without PYTHON* variables: the emulated python must
    import the bnn-export installed in the userland, not this checkout (PYTHONPATH)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "BNN_"))}


@pytest.fixture(scope="module")
def installed(rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Build the sdist here, install it with the `device` extra in the userland's venv."""
    dist = tmp_path_factory.mktemp("sdist")
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(dist)], cwd=ROOT,
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    (sdist,) = dist.glob("bnn_export-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for needed in ("runtime/bnn_core.c", "runtime/bnn_neon.c", "runtime/ort_ops.cc",
                   "runtime/bnn.h", "ort-headers/include/onnxruntime_lite_custom_op.h",
                   "ort-headers/COPYRIGHT", "setup.py", "bnn_export/runtime/worker.py"):  # fmt: skip
        assert needed in names, f"the sdist lacks {needed}"
    assert not any(name.endswith(".so") for name in names), "the sdist ships built libraries"

    drop = rootfs / "tmp" / f"bnn-sdist-{os.getpid()}"
    drop.mkdir(parents=True)
    try:
        shutil.copy2(sdist, drop / sdist.name)
        pip = [f"{VENV}/bin/python", "-m", "pip"]
        in_chroot(rootfs, *pip, "uninstall", "-y", "-q", "bnn-export", timeout=600)
        start = time.monotonic()
        # --no-index: everything `device` needs is already in the venv, so the install proves
        # the lean set is enough, and needs no network (the build backend is there too).
        done = in_chroot(rootfs, *pip, "install", "-v", "--no-index", "--no-build-isolation",
                         f"/tmp/{drop.name}/{sdist.name}[device]", timeout=3600)  # fmt: skip
        seconds = time.monotonic() - start
    finally:
        shutil.rmtree(drop)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    listing = in_chroot(rootfs, *pip, "list", "--format=json", timeout=600)
    assert listing.returncode == 0, listing.stderr
    packages = {p["name"].lower(): p["version"] for p in json.loads(listing.stdout)}
    site = rootfs / VENV.lstrip("/") / "lib" / "python3.11" / "site-packages"
    return {"seconds": seconds, "log": done.stdout + done.stderr, "packages": packages,
            "lib_dir": site / "bnn_export" / "runtime" / "_lib", "sdist": sdist}  # fmt: skip


def test_sdist_builds_neon_kernels_in_a_lean_aarch64_install(installed, rootfs) -> None:
    print(f"\nsdist install under qemu: {installed['seconds']:.0f} s")
    lib_dir = installed["lib_dir"]
    assert isinstance(lib_dir, Path)
    for name in ("libbnn_kernels.so", "libbnn_ort.so"):
        assert (lib_dir / name).is_file(), f"{name} was not built:\n{installed['log'][-3000:]}"
        assert elf_arch(lib_dir / name) == "aarch64"
    log = str(installed["log"])
    # setup.py's compiler lines, as pip -v shows them (indented)
    native = [line.strip() for line in log.splitlines() if line.strip().startswith("[bnn-native]")]
    compiled = [line for line in native if " -c " in line]
    assert any("runtime/bnn_neon.c -o" in line for line in compiled), native
    assert not any("bnn_avx" in line or "-mavx" in line for line in compiled), native
    # the op library was built with the headers the sdist carries
    assert any("ort_ops.cc" in line and "/ort-headers/include" in line for line in native), native
    packages = installed["packages"]
    assert isinstance(packages, dict)
    assert {"bnn-export", "numpy", "onnx", "onnxruntime"} <= set(packages)
    assert not [p for p in NOT_ON_DEVICE if p in packages], packages

    probe = subprocess.run(
        [*emulated_python(rootfs), "-c",
         "import json, platform; from bnn_export.runtime import native; "
         "print(json.dumps({'machine': platform.machine(), 'kernel': native.kernel_name(), "
         "'available': native.available_kernels(), 'lib': str(native.lib_dir())}))"],
        capture_output=True, text=True, timeout=600, env=device_env(), cwd="/",
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    facts = json.loads(probe.stdout)
    assert facts["machine"] == "aarch64"
    assert facts["kernel"] == "neon" and "neon" in facts["available"], facts
    assert facts["lib"].endswith(f"{VENV}/lib/python3.11/site-packages/bnn_export/runtime/_lib")


# (c, o, h, w, kh, kw, stride, pads (t, l, b, r), dilation, group, pad_value): channel counts
# around the 64-bit word (and NEON's 128-bit register) boundaries, both pad values, strides,
# dilation and groups.
CASES = [
    (3, 5, 6, 7, 3, 3, 1, (1, 1, 1, 1), 1, 1, 1),
    (31, 7, 5, 9, 3, 3, 1, (1, 1, 1, 1), 1, 1, 0),
    (65, 9, 8, 8, 3, 3, 2, (1, 1, 1, 1), 1, 1, 1),
    (128, 16, 6, 6, 3, 3, 1, (1, 0, 1, 2), 1, 1, 0),
    (100, 24, 7, 5, 1, 1, 1, (0, 0, 0, 0), 1, 1, 1),
    (64, 8, 9, 9, 3, 3, 1, (2, 2, 2, 2), 2, 2, 0),
    (192, 33, 4, 4, 3, 3, 1, (1, 1, 1, 1), 1, 3, 1),
]

DEVICE_SCRIPT = """
import json, sys
import numpy as np
from bnn_export.runtime import native
from bnn_export.runtime.onnx_session import onnx_session

result = {"kernels": native.available_kernels()}
for kernel in ("neon", "portable"):
    with native.forced_kernel(kernel):
        for i in range(int(sys.argv[1])):
            session = onnx_session(f"case{i}.onnx")
            x = np.load(f"x{i}.npy")
            np.save(f"y{i}_{kernel}.npy", session.run(None, {"X": x})[0])
print(json.dumps(result))
"""


def test_custom_ops_in_aarch64_onnxruntime_match_numpy_reference(
    installed, rootfs, tmp_path
) -> None:
    from onnx import TensorProto, helper, numpy_helper

    from bnn_export.convert import onnx_ops

    rng = np.random.default_rng(6)
    wants = []
    for i, (c, o, h, w, kh, kw, s, pads, d, g, pad_value) in enumerate(CASES):
        attrs = {"channels_in": c, "kernel_shape": (kh, kw), "strides": (s, s), "pads": pads,
                 "dilations": (d, d), "group": g, "pad_value": pad_value}  # fmt: skip
        x = rng.standard_normal((2, c, h, w)).astype(np.float32)
        x[0, 0, 0, 0] = 0.0  # sign(0) = +1 is part of the contract
        bits = rng.choice(np.array([-1, 1], np.int8), size=(o, c // g, kh, kw))
        weights = onnx_ops.pack_conv_weights(bits)
        m = rng.uniform(0.5, 2.0, o).astype(np.float32)
        b = rng.standard_normal(o).astype(np.float32)
        graph = helper.make_graph(
            [onnx_ops.make_binary_conv2d_node(["X", "W", "m", "b"], ["Y"], **attrs)], "bnn",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, c, None, None])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None] * 4)],
            initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(m, "m"),
                         numpy_helper.from_array(b, "b")],
        )  # fmt: skip
        model = helper.make_model(graph, opset_imports=[
            helper.make_opsetid("", 17), helper.make_opsetid(onnx_ops.DOMAIN, 1)])  # fmt: skip
        (tmp_path / f"case{i}.onnx").write_bytes(model.SerializeToString())
        np.save(tmp_path / f"x{i}.npy", x)
        wants.append(onnx_ops.binary_conv2d_reference(x, weights, m, b, **attrs))
    (tmp_path / "device.py").write_text(DEVICE_SCRIPT)
    run = subprocess.run([*emulated_python(rootfs), "device.py", str(len(CASES))], cwd=tmp_path,
                         capture_output=True, text=True, timeout=1200, env=device_env())  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "neon" in json.loads(run.stdout.strip().splitlines()[-1])["kernels"]
    for i, want in enumerate(wants):
        for kernel in ("neon", "portable"):
            got = np.load(tmp_path / f"y{i}_{kernel}.npy")
            assert got.dtype == np.float32 and got.shape == want.shape, (i, kernel)
            np.testing.assert_array_equal(got, want, err_msg=f"case {CASES[i]} {kernel}")


def test_bench_onnx_over_ssh_runs_the_aarch64_worker_emulated(
    installed, rootfs, sshd, bench_artifacts, tmp_path, capsys
) -> None:
    from bnn_export.cli import main

    remote_root = tmp_path / "remote tmp"
    remote_root.mkdir()
    report = tmp_path / "report"
    python = rootfs / VENV.lstrip("/") / "bin" / "python"
    emulator = [QEMU, "-L", str(rootfs)]
    start = time.monotonic()
    code = main(["bench", str(bench_artifacts.onnx["onnxruntime"]),
                 "--device", f"ssh://{sshd.user}@127.0.0.1:{sshd.port}",
                 "--ssh-identity", sshd.key, "--ssh-known-hosts", sshd.known_hosts,
                 "--ssh-config", os.devnull, "--remote-tmp", str(remote_root),
                 "--remote-python", str(python), "--emulator", shlex.join(emulator),
                 "--reference", str(bench_artifacts.run), "--max-eval", "60",
                 "--report", str(report), "--timeout", "900", *FAST])  # fmt: skip
    seconds = time.monotonic() - start
    _, err = capsys.readouterr()
    assert code == 0, err
    print(f"\nbench over ssh, worker under qemu: {seconds:.0f} s")
    row = json.loads((report / "bench.json").read_text())["results"][0]
    assert row["device"]["transport"] == "ssh"
    assert row["device"]["emulated"] is True and row["device"]["emulator"] == emulator
    assert "NOT ARM latency" in row["device"]["note"]
    assert row["device"]["arch"] == os.uname().machine != "aarch64"  # the host's, not ARM's
    assert row["runtime"]["name"] == "onnxruntime" and row["runtime"]["machine"] == "aarch64"
    assert row["runtime"]["info"]["bnn_kernel"] == "neon"
    assert row["runtime"]["python"].startswith("3.11.")
    assert row["latency_us"]["count"] >= 5 and row["latency_us"]["p50"] > 0
    accuracy = row["accuracy"]
    assert accuracy["measured_on"] == "device" and accuracy["samples"] == 60
    assert accuracy["agreement"] == 1.0 and accuracy["max_abs_logit_diff"] < 1e-4
    header = (report / "bench.md").read_text().splitlines()[0]
    assert "emulated, not ARM latency" in header
    assert os.listdir(remote_root) == []
