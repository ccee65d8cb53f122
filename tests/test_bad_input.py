"""Bad input for every command: one ``error:`` line, exit 2 (130/143 on signals), no
traceback, no partial output.

Most cases call ``bnn_export.cli.main`` in-process (what the console script runs);
signals and the plain-TFLite file need real processes.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest

from bnn_export.artifacts import read_artifact
from bnn_export.binarizers import get
from bnn_export.bitratio import check_ratio_meetable, fix_layer_bits
from bnn_export.checkpoint import Checkpoint, save_checkpoint
from bnn_export.cli import main
from bnn_export.errors import BnnExportError
from bnn_export.models import arch_spec
from bnn_export.models.torch_build import build_torch_model, torch_state
from bnn_export.runtime.runners import OnnxRuntimeRunner
from tests.conftest import write_cifar_fixture

FAST_BENCH = ("--num-runs", "1", "--min-secs", "0", "--max-eval", "8", "--quiet")


def cli_fails(capsys: pytest.CaptureFixture[str], *args: str, match: str) -> str:
    """Run the CLI in-process; assert exit 2, one error line matching, no traceback."""
    capsys.readouterr()
    rc = main(list(args))
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert match in err, err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A digits checkpoint (random weights), its .onnx export, and damaged copies of both."""
    root = tmp_path_factory.mktemp("bad input")
    arch = arch_spec("digits")
    model = build_torch_model(arch, get("ste"), seed=0)
    ckpt = Checkpoint("torch", arch, get("ste"), "digits", torch_state(model))
    good = root / "good.safetensors"
    save_checkpoint(good, ckpt)
    out = {"ckpt": good}
    assert (
        main(
            [
                "convert",
                str(good),
                "--format",
                "onnx",
                "-o",
                str(root / "good.onnx"),
                "--no-validate",
                "--json",
            ]
        )
        == 0
    )
    out["onnx"] = root / "good.onnx"
    for kind, src in (("ckpt", good), ("onnx", out["onnx"])):
        data = src.read_bytes()
        suffix = src.suffix
        for damage, content in (
            ("truncated", data[: len(data) // 3]),
            ("zero", b""),
            ("garbage", np.random.default_rng(0).bytes(len(data))),
        ):
            path = root / f"{damage}-{kind}{suffix}"
            path.write_bytes(content)
            out[f"{damage}-{kind}"] = path
    # NaN / inf weights
    for bad in ("nan", "inf"):
        tensors = dict(ckpt.tensors)
        w = tensors["conv1.weight"].copy()
        w.flat[5] = np.nan if bad == "nan" else np.inf
        tensors["conv1.weight"] = w
        path = root / f"{bad}.safetensors"
        save_checkpoint(path, Checkpoint("torch", arch, get("ste"), "digits", tensors))
        out[bad] = path
    # an .onnx with an op from a domain no runtime of ours implements
    proto = onnx.load(str(out["onnx"]))
    node = next(n for n in proto.graph.node if n.op_type == "BinaryConv2d")
    node.op_type, node.domain = "MysteryOp", "com.example"
    proto.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    out["unknown-op"] = root / "unknown-op.onnx"
    onnx.save(proto, str(out["unknown-op"]))
    out["root"] = root
    return out


# -- damaged checkpoints and artifacts ---------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "zero", "garbage"])
def test_damaged_checkpoint_convert_and_bench(
    files: dict[str, Path], damage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = str(files[f"{damage}-ckpt"])
    for fmt in ("onnx", "tflite"):
        out = tmp_path / f"m.{fmt}"
        cli_fails(
            capsys,
            "convert",
            src,
            "--format",
            fmt,
            "-o",
            str(out),
            match="is not a valid bnn-export checkpoint (corrupt or truncated)",
        )
        assert not out.exists() and os.listdir(tmp_path) == []
    cli_fails(capsys, "bench", src, *FAST_BENCH, match="not a valid bnn-export checkpoint")
    # a damaged checkpoint as bench's --reference
    cli_fails(
        capsys,
        "bench",
        str(files["onnx"]),
        "--reference",
        src,
        *FAST_BENCH,
        match="not a valid bnn-export checkpoint",
    )
    # inspect takes artifacts: a checkpoint (damaged or not) is refused by content
    cli_fails(capsys, "inspect", src, match="error:")


@pytest.mark.parametrize("damage", ["truncated", "zero", "garbage"])
def test_damaged_onnx_inspect_and_bench(
    files: dict[str, Path], damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    src = str(files[f"{damage}-onnx"])
    match = "is empty (0 bytes)" if damage == "zero" else "nor a valid ONNX model"
    cli_fails(capsys, "inspect", src, match=match)
    cli_fails(capsys, "bench", src, *FAST_BENCH, match=match)


def test_convert_of_an_artifact_is_refused(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli_fails(
        capsys,
        "convert",
        str(files["onnx"]),
        "--format",
        "tflite",
        "-o",
        str(tmp_path / "m.tflite"),
        match="not a valid bnn-export checkpoint",
    )
    assert os.listdir(tmp_path) == []


def test_unknown_custom_onnx_op_is_named(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    for command in (["inspect"], ["bench", *FAST_BENCH]):
        err = cli_fails(
            capsys,
            command[0],
            str(files["unknown-op"]),
            *command[1:],
            match="uses custom op(s) com.example::MysteryOp",
        )
        assert "fix: export with `bnn-export convert --format onnx --target" in err


def test_artifact_size_limit(files: dict[str, Path]) -> None:
    with pytest.raises(BnnExportError, match="over the 1000-byte limit"):
        read_artifact(files["onnx"], max_bytes=1000)
    assert read_artifact(files["onnx"])[0] == "onnx"


# -- TFLite: truncated, and a model without LCE ops --------------------------------------

PLAIN_TFLITE = """
import os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"; os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf, tf_keras as keras
tf.random.set_seed(0)
i = keras.Input((8, 8, 1)); x = keras.layers.Conv2D(4, 3)(i)
x = keras.layers.GlobalAveragePooling2D()(x); o = keras.layers.Dense(10)(x)
open(sys.argv[1], "wb").write(tf.lite.TFLiteConverter.from_keras_model(keras.Model(i, o)).convert())
"""


@pytest.fixture(scope="module")
def plain_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plain") / "plain.tflite"
    done = subprocess.run(
        [sys.executable, "-c", PLAIN_TFLITE, str(path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return path


def test_tflite_without_lce_ops_inspects_and_benches(
    plain_tflite: Path,
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["inspect", str(plain_tflite)]) == 0
    out = capsys.readouterr().out
    assert "CONV_2D" in out and "1-bit params: 0" in out
    fast = ("--num-runs", "1", "--min-secs", "0", "--quiet")  # no dataset: no --max-eval
    assert main(["bench", str(plain_tflite), *fast, "--json", str(tmp_path / "b.json")]) == 0
    assert (tmp_path / "b.json").is_file()
    # accuracy options for a file with no dataset would be ignored: refused
    for option in (("--max-eval", "8"), ("--reference", str(files["ckpt"]))):
        cli_fails(capsys, "bench", str(plain_tflite), *fast, *option, match="records no dataset")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.99])
def test_truncated_tflite(
    plain_tflite: Path, keep: float, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = plain_tflite.read_bytes()
    path = tmp_path / "cut.tflite"
    path.write_bytes(data[: int(len(data) * keep)])
    for command in (["inspect"], ["bench", *FAST_BENCH]):
        cli_fails(
            capsys, command[0], str(path), *command[1:], match="not a valid TFLite flatbuffer"
        )


# -- wrong inputs at bench time ----------------------------------------------------------


def test_bench_with_wrong_input_shape(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cifar = write_cifar_fixture(tmp_path / "cifar")
    cli_fails(
        capsys,
        "bench",
        str(files["onnx"]),
        "--dataset",
        f"cifar10:{cifar}",
        *FAST_BENCH,
        match="test images have shape (3, 32, 32) (C, H, W), but",
    )


def test_runner_rejects_wrong_shape_and_dtype(files: dict[str, Path]) -> None:
    runner = OnnxRuntimeRunner(files["onnx"].read_bytes())
    with pytest.raises(BnnExportError, match="input dtype float64 given; the model takes float32"):
        runner.predict(np.zeros((2, 1, 8, 8)))
    with pytest.raises(BnnExportError, match=r"input shape \(1, 9, 8\) does not match"):
        runner.predict(np.zeros((2, 1, 9, 8), np.float32))


def test_corrupt_dataset_for_train_and_sweep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cifar = write_cifar_fixture(tmp_path / "cifar")
    batch = cifar / "data_batch_1"
    batch.write_bytes(batch.read_bytes()[:500])
    for command in ("train", "sweep"):
        cli_fails(
            capsys,
            command,
            "--dataset",
            f"cifar10:{cifar}",
            "--model",
            "vgg-small",
            "--epochs",
            "1",
            "-o",
            str(tmp_path / command),
            match="error:",
        )
        assert not (tmp_path / command).exists()


# -- NaN/inf weights, bit ratios that cannot be met --------------------------------------


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_non_finite_weights(
    files: dict[str, Path], bad: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    match = "has non-finite values (NaN/inf) in 'conv1.weight'"
    cli_fails(
        capsys,
        "convert",
        str(files[bad]),
        "--format",
        "onnx",
        "-o",
        str(tmp_path / "m.onnx"),
        match=match,
    )
    cli_fails(capsys, "bench", str(files[bad]), *FAST_BENCH, match=match)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("ratio, sign", [("0.001", "-1"), ("0.999", "+1")])
def test_bit_ratio_that_cannot_be_met(
    files: dict[str, Path],
    ratio: str,
    sign: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "m.onnx"
    err = cli_fails(
        capsys,
        "convert",
        str(files["ckpt"]),
        "--format",
        "onnx",
        "-o",
        str(out),
        "--bit-ratio",
        ratio,
        "--no-validate",
        match="cannot be met",
    )
    assert f"so every weight would be {sign}" in err and "per channel" in err
    assert not out.exists()
    # the smallest meetable ratio for these layers converts
    assert (
        main(
            [
                "convert",
                str(files["ckpt"]),
                "--format",
                "onnx",
                "-o",
                str(out),
                "--bit-ratio",
                "0.01",
                "--no-validate",
                "--json",
            ]
        )
        == 0
    )


@pytest.mark.parametrize(
    "args, layer, sign",
    [
        (("--bit-ratio", "0.001"), "conv1", "-1"),  # round(0.001 * 288) = 0
        (("--bit-ratio", "0.999"), "conv1", "+1"),
        # per layer n is the whole layer (conv1: 18432 weights)
        (("--bit-ratio", "0.00001", "--ot-granularity", "layer"), "conv1", "-1"),
    ],
)
def test_train_refuses_a_bit_ratio_that_cannot_be_met(
    args: tuple[str, ...],
    layer: str,
    sign: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Refused before any training (no dataset pass, no output), naming the layer and the
    ratios the model can meet."""
    out = tmp_path / "run"
    t0 = time.perf_counter()
    err = cli_fails(
        capsys,
        "train",
        "--binarizer",
        "equal_bits",
        *args,
        "--epochs",
        "50",
        "-o",
        str(out),
        "--quiet",
        match="cannot be met",
    )
    assert time.perf_counter() - t0 < 30, "checked before training"
    assert f"in layer {layer!r}" in err and f"every weight would be {sign}" in err
    assert "which every layer meets" in err and "achievable there: k/" in err
    assert not out.exists() and os.listdir(tmp_path) == []
    # a sweep over ratios refuses up front too
    err = cli_fails(
        capsys,
        "sweep",
        "--bit-ratios",
        "0.5,0.001",
        "--epochs",
        "50",
        "-o",
        str(tmp_path / "sweep"),
        "--quiet",
        match="cannot be met",
    )
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("command", ["train", "sweep"])
@pytest.mark.parametrize("lr", ["0", "-0.1", "nan", "inf"])
def test_train_and_sweep_refuse_a_bad_learning_rate(
    command: str, lr: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    cli_fails(
        capsys,
        command,
        "--lr",
        lr,
        "-o",
        str(out),
        "--quiet",
        match="--lr must be a positive number",
    )
    assert not out.exists()


# -- options that would be ignored are refused -------------------------------------------


@pytest.mark.parametrize(
    "args, match",
    [
        (
            ("--format", "tflite", "--target", "openvino"),
            "--target openvino applies to --format onnx",
        ),
        (
            ("--format", "onnx", "--ot-granularity", "layer"),
            "--ot-granularity layer applies to bit-ratio",
        ),
        (
            ("--format", "onnx", "--no-recalibrate-bn"),
            "applies to bit-ratio fixing, and no --bit-ratio",
        ),
        (
            ("--format", "onnx", "--recalibrate-bn"),
            "applies to bit-ratio fixing, and no --bit-ratio",
        ),
        (
            ("--format", "onnx", "--no-validate", "--dataset", "digits"),
            "--no-validate turns validation off",
        ),
        (
            (
                "--format",
                "onnx",
                "--no-validate",
                "--bit-ratio",
                "0.3",
                "--no-recalibrate-bn",
                "--dataset",
                "digits",
            ),
            "--no-validate turns validation off",
        ),
    ],
)
def test_convert_refuses_options_it_would_ignore(
    files: dict[str, Path],
    args: tuple[str, ...],
    match: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "m.out"
    cli_fails(capsys, "convert", str(files["ckpt"]), "-o", str(out), *args, match=match)
    assert os.listdir(tmp_path) == []


def test_convert_dataset_without_validation_is_for_batchnorm(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dataset with --no-validate is used (and accepted) when it re-estimates batch norm."""
    out = tmp_path / "m.onnx"
    assert (
        main(
            [
                "convert",
                str(files["ckpt"]),
                "--format",
                "onnx",
                "-o",
                str(out),
                "--no-validate",
                "--bit-ratio",
                "0.3",
                "--dataset",
                "digits",
                "--json",
            ]
        )
        == 0
    )
    assert '"batchnorm_reestimated": true' in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, match",
    [
        (("--ssh-identity", "key"), "--ssh-identity configure(s) ssh, and the device is"),
        (("--ssh-option", "Port=2"), "--ssh-option configure(s) ssh"),
        (("--lce-benchmark-binary", "/bin/true"), "none of the models is one"),
        (("--taskset", "1"), "--taskset pins lce_benchmark_model"),
        (("--remote-python", "python3"), "--remote-python runs the .onnx worker on an ssh device"),
        (("--timeout", "5"), "--timeout applies to models run through the device layer"),
        (("--remote-tmp", "/tmp"), "--remote-tmp applies to models run through the device layer"),
        (("--min-agreement", "0.99"), "--min-agreement compares the models with --reference"),
    ],
)
def test_bench_refuses_options_it_would_ignore(
    files: dict[str, Path],
    args: tuple[str, ...],
    match: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = tmp_path / "report"
    cli_fails(
        capsys,
        "bench",
        str(files["onnx"]),
        str(files["ckpt"]),
        *args,
        *FAST_BENCH,
        "--report",
        str(report),
        match=match,
    )
    assert not report.exists()


def test_num_threads_is_for_the_pytorch_trainer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli_fails(
        capsys,
        "train",
        "--framework",
        "larq",
        "--num-threads",
        "2",
        "-o",
        str(tmp_path / "run"),
        match="--num-threads",
    )
    assert os.listdir(tmp_path) == []


def test_one_weight_per_channel_never_meets_a_ratio() -> None:
    scores = np.random.default_rng(0).normal(size=(4, 1, 1, 1)).astype(np.float32)
    for p in (0.1, 0.5, 0.9):
        with pytest.raises(BnnExportError, match=r"of the 1 weights per channel"):
            fix_layer_bits(scores, np.ones(4, np.float32), p, "channel")
    export, ratio = fix_layer_bits(scores, np.ones(4, np.float32), 0.5, "layer")
    assert ratio.ones_expected == 2 and (export.bits == 1).sum() == 2
    check_ratio_meetable(0.5, 2, "channel")


# -- unwritable output paths, disk full --------------------------------------------------


def test_output_under_a_regular_file(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    under = str(blocker / "out")
    match = "it is a file"
    cli_fails(capsys, "train", "--epochs", "1", "-o", under, match=match)
    cli_fails(capsys, "sweep", "--epochs", "1", "-o", under, match=match)
    cli_fails(
        capsys,
        "convert",
        str(files["ckpt"]),
        "--format",
        "onnx",
        "-o",
        under + ".onnx",
        match=match,
    )
    cli_fails(
        capsys,
        "bench",
        str(files["onnx"]),
        *FAST_BENCH,
        "--json",
        under + ".json",
        match="is not a writable directory",
    )
    cli_fails(
        capsys,
        "bench",
        str(files["onnx"]),
        *FAST_BENCH,
        "--report",
        under,
        match="is not a writable directory",
    )
    assert os.listdir(tmp_path) == ["file"]


@contextlib.contextmanager
def _tmpfs(path: Path, options: str) -> Iterator[bool]:
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
    )
    try:
        yield done.returncode == 0
    finally:
        if done.returncode == 0:
            subprocess.run(["umount", str(path)], check=True)


def test_read_only_mount(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with _tmpfs(tmp_path / "ro", "size=64k,ro") as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        cli_fails(
            capsys,
            "convert",
            str(files["ckpt"]),
            "--format",
            "onnx",
            "-o",
            str(tmp_path / "ro" / "m.onnx"),
            match="is not writable",
        )
        cli_fails(
            capsys,
            "train",
            "--epochs",
            "1",
            "-o",
            str(tmp_path / "ro" / "run"),
            match="is not writable",
        )


@pytest.fixture
def full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory with ~8 KiB free: a 64 KiB tmpfs when root, else writes fail ENOSPC."""
    where = tmp_path / "full"
    with _tmpfs(where, "size=64k") as mounted:
        if mounted:
            (where / "filler").write_bytes(b"\0" * 56 * 1024)
        else:
            import errno

            real = Path.write_bytes

            def enospc(self: Path, data: bytes) -> int:  # type: ignore[override]
                if where in self.parents:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real(self, data)

            monkeypatch.setattr(Path, "write_bytes", enospc)
            (where / "filler").write_bytes(b"")
        yield where


def test_disk_full(
    files: dict[str, Path], full_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    match = "No space left on device"
    cli_fails(
        capsys,
        "convert",
        str(files["ckpt"]),
        "--format",
        "onnx",
        "-o",
        str(full_disk / "m.onnx"),
        "--no-validate",
        match=match,
    )
    cli_fails(
        capsys,
        "bench",
        str(files["onnx"]),
        *FAST_BENCH,
        "--report",
        str(full_disk / "report"),
        match=match,
    )
    cli_fails(
        capsys, "train", "--epochs", "1", "--quiet", "-o", str(full_disk / "run"), match=match
    )
    assert os.listdir(full_disk) == ["filler"]  # no partial files, no temp files


# -- interrupted conversion --------------------------------------------------------------


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_tflite_conversion(
    files: dict[str, Path], sig: signal.Signals, code: int, tmp_path: Path
) -> None:
    out_dir, tmp_dir = tmp_path / "out", tmp_path / "tmp"
    out_dir.mkdir()
    tmp_dir.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bnn_export",
            "convert",
            str(files["ckpt"]),
            "--format",
            "tflite",
            "-o",
            str(out_dir / "m.tflite"),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_dir)},
    )
    # wait until the LCE child process runs (its job dir appears), then interrupt
    deadline = time.monotonic() + 60
    while not any(tmp_dir.glob("bnn-export-lce-*/job.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: interrupted; no output was written"
        if sig == signal.SIGINT
        else "error: terminated (SIGTERM); no output was written"
    ]
    assert "Traceback" not in err
    assert os.listdir(out_dir) == [] and os.listdir(tmp_dir) == []
    ps = subprocess.run(["pgrep", "-f", f"lce_worker {tmp_dir}"], capture_output=True)
    assert ps.returncode == 1, "the LCE child process outlived the CLI"


# -- untrusted files: pickles are never loaded ---------------------------------------------


class _Payload:
    """Unpickling this touches a file: proof that the pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))  # type: ignore[return-value]


@pytest.mark.parametrize("name", ["checkpoint.safetensors", "model.pt", "model.onnx"])
def test_malicious_pickle_is_refused_and_never_runs(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    path = run / name
    if name.endswith(".pt"):
        torch.save({"state_dict": _Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(_Payload(marker)))
    if name.endswith(".pt"):
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.exists()  # the payload is live: unpickling it would touch the marker
    marker.unlink()
    target = str(run if name == "checkpoint.safetensors" else path)
    cli_fails(
        capsys,
        "convert",
        target,
        "--format",
        "onnx",
        "-o",
        str(tmp_path / "o.onnx"),
        match="not a valid bnn-export checkpoint",
    )
    cli_fails(capsys, "bench", target, *FAST_BENCH, match="error:")
    cli_fails(capsys, "inspect", str(path), match="error:")
    assert not marker.exists()
    shutil.rmtree(run)
