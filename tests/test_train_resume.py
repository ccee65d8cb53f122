"""Resumable PyTorch runs: the run directory from the first epoch on, ``--resume`` giving
the same checkpoint as an uninterrupted run, SIGTERM, metrics.jsonl, TensorBoard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from bnn_export import run as run_module
from bnn_export.cli import main

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--batch-size", "128", "--device", "cpu", "--quiet", "--seed", "4"]


def _stop_after(monkeypatch: pytest.MonkeyPatch, epochs: int) -> None:
    """Ctrl-C right after epoch ``epochs`` was saved (a test hook on the run writer)."""
    original = run_module.RunDirectory.epoch_end

    def epoch_end(self, record, state):  # type: ignore[no-untyped-def]
        original(self, record, state)
        if record["epoch"] == epochs:
            raise KeyboardInterrupt

    monkeypatch.setattr(run_module.RunDirectory, "epoch_end", epoch_end)


def test_stopped_and_resumed_run_equals_an_uninterrupted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(["train", "--epochs", "3", *FAST, "--binarizer", "siman", "-o", str(whole)]) == 0
    with monkeypatch.context() as m:
        _stop_after(m, 1)
        code = main(["train", "--epochs", "3", *FAST, "--binarizer", "siman", "-o", str(parts)])
    assert code == 130
    err = capsys.readouterr().err
    assert f"stopped after epoch 1 of 3; {parts} holds that state" in err
    assert f"bnn-export train --resume {parts}" in err
    assert sorted(p.name for p in parts.iterdir()) == ["metrics.jsonl", "resume.pt"]
    assert len((parts / "metrics.jsonl").read_text().splitlines()) == 1
    assert main(["train", "--resume", str(parts), "--quiet"]) == 0
    a = load_file(str(whole / "checkpoint.safetensors"))
    b = load_file(str(parts / "checkpoint.safetensors"))
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    lines = [json.loads(x) for x in (parts / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    full = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    for got, want in zip(lines, full, strict=True):
        for key in ("loss", "train_accuracy", "test_accuracy", "lr"):
            assert got[key] == want[key], key
        assert got["images_per_second"] > 0 and got["seconds"] > 0
    metrics = json.loads((parts / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and len(metrics["history"]) == 3


def test_sigterm_leaves_a_resumable_directory_and_says_how_to_resume(tmp_path: Path) -> None:
    out = tmp_path / "R"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bnn_export", "train", "--epochs", "40", *FAST, "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    try:
        deadline = time.monotonic() + 90
        while not (out / "metrics.jsonl").is_file() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    assert "error: terminated (SIGTERM); stopped after epoch" in err
    assert f"--resume {out}" in err
    assert "no output was written" not in err
    assert (out / "resume.pt").is_file() and not (out / "checkpoint.safetensors").exists()
    done = len((out / "metrics.jsonl").read_text().splitlines())
    # continue to a shorter total than first planned: the schedule is re-planned for it
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bnn_export",
            "train",
            "--resume",
            str(out),
            "--epochs",
            str(done + 1),
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert r.returncode == 0, r.stderr
    metrics = json.loads(r.stdout)
    assert metrics["epochs"] == done + 1 and len(metrics["history"]) == done + 1
    assert metrics["history"][-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine ends at 0
    assert (out / "checkpoint.safetensors").is_file()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "R"
    assert main(["train", "--epochs", "1", *FAST, "-o", str(out)]) == 0
    return out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "0.5"], "--lr 0.5 contradicts the run in"),
        (["--model", "resnet20"], "--model 'resnet20' contradicts the run in"),
        (["--batch-size", "32"], "it was trained with 128"),
        (["--epochs", "1"], "has already finished its 1 epochs"),
        (["--framework", "larq"], "--resume is an option of the PyTorch trainer"),
        (["-o", "elsewhere"], "a resumed run writes into its own directory"),
    ],
)
def test_resume_refuses_contradicting_options(
    finished_run: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["train", "--resume", str(finished_run), *args]) == 2
    assert message in capsys.readouterr().err


def test_resume_accepts_the_recorded_values_and_trains_further(
    finished_run: Path, tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "R"
    shutil.copytree(finished_run, copy)
    code = main(
        [
            "train",
            "--resume",
            str(copy),
            "--lr",
            "0.01",
            "--batch-size",
            "128",
            "--epochs",
            "2",
            "--quiet",
        ]
    )
    assert code == 0
    assert len((copy / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_without_a_state_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 2
    assert "no resumable training state" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "resume.pt").write_bytes(b"not a torch file")
    assert main(["train", "--resume", str(tmp_path / "bad")]) == 2
    assert "not a valid bnn-export resume state" in capsys.readouterr().err


def test_tensorboard_writes_event_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tensorboard")
    out = tmp_path / "R"
    assert main(["train", "--epochs", "1", *FAST, "--tensorboard", "-o", str(out)]) == 0
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert main(["train", "--epochs", "1", *FAST, "--tensorboard"]) == 2
    assert "no -o was given" in capsys.readouterr().err
