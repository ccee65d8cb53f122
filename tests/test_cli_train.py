from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnn_export.checkpoint import load_checkpoint
from tests.conftest import run_cli


def test_train_digits_ste_reaches_90_percent(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = run_cli("train", "--dataset", "digits", "--binarizer", "ste", "-o", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    assert "test accuracy" in res.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.90
    assert metrics["binarizer"]["name"] == "ste" and metrics["framework"] == "torch"
    assert set(metrics["bit_ratios"]) == {"conv1", "conv2", "fc1"}
    for r in metrics["bit_ratios"].values():
        assert 0.0 < r["min"] <= r["mean"] <= r["max"] < 1.0
    assert load_checkpoint(out).arch["name"] == "digits"
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.safetensors",
        "metrics.json",
        "metrics.jsonl",  # one line per epoch, written as the run goes
        "resume.pt",  # the resumable state (train --resume)
    ]


@pytest.mark.parametrize("threads", [None, "2"])
def test_train_json_output(tmp_path: Path, threads: str | None) -> None:
    more = ("--num-threads", threads) if threads else ()
    res = run_cli("train", "--epochs", "1", "--binarizer", "none", "--json", *more)
    assert res.returncode == 0, res.stderr
    metrics = json.loads(res.stdout)
    assert metrics["epochs"] == 1 and metrics["bit_ratios"] == {}
    # the thread count used is recorded: auto is one for a model this small
    assert metrics["settings"]["num_threads"] == int(threads or 1)


def test_resnet18_on_cifar_fixture(cifar_dir: Path, tmp_path: Path) -> None:
    res = run_cli(
        "train",
        "--model",
        "resnet18",
        "--dataset",
        f"cifar10:{cifar_dir}",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "-o",
        str(tmp_path / "r18"),
        "--json",
    )
    assert res.returncode == 0, res.stderr
    metrics = json.loads(res.stdout)
    assert metrics["arch"]["kwargs"]["input_shape"] == [3, 32, 32]
    assert len(metrics["bit_ratios"]) == 16  # 8 Bi-Real blocks x 2 binary convs


def test_digits_adapted_to_a_cifar_model() -> None:
    res = run_cli("train", "--model", "resnet20", "--epochs", "1", "--json")
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--model", "alexnet"],
            "unknown model 'alexnet'; valid: birealnet18, digits, quicknet, reactnet-a, "
            "resnet18, resnet20, vgg-small",
        ),
        (["--binarizer", "xnor"], "unknown binarizer 'xnor'; valid:"),
        (
            ["--dataset", "imagenet"],
            "unknown dataset 'imagenet'; valid: cifar10, digits, imagefolder, mnist",
        ),
        (["--dataset", "cifar10:/no/such/dir"], "does not exist"),
        (["--framework", "jax"], "unknown framework 'jax'"),
        (["-o", "/dev/null/run"], "cannot create output directory"),
    ],
)
def test_bad_input_is_one_clear_error(args: list[str], message: str) -> None:
    res = run_cli("train", "--epochs", "1", "--quiet", *args)
    assert res.returncode == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("error: ")


def test_failed_run_leaves_no_partial_output(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = run_cli("train", "--epochs", "1", "--dataset", "mnist:/no/such", "-o", str(out))
    assert res.returncode == 2 and not out.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bit-ratio", "0"], "bit ratio must be a number in (0, 1), got 0.0"),
        (["--bit-ratio", "1.5"], "bit ratio must be a number in (0, 1), got 1.5"),
        (["--bit-ratio", "nan"], "bit_ratio=nan must be finite"),
        (["--prune-rate", "1"], "prune rate must be a number in [0, 1), got 1.0"),
        (["--prune-rate", "-0.5"], "prune rate must be a number in [0, 1), got -0.5"),
        (["--ot-granularity", "x"], "granularity must be one of channel, layer"),
    ],
)
def test_equal_bits_bad_parameters(args: list[str], message: str) -> None:
    res = run_cli("train", "--binarizer", "equal_bits", "--epochs", "1", "--quiet", *args)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr


def test_equal_bits_records_achieved_ratio(tmp_path: Path) -> None:
    res = run_cli(
        "train", "--binarizer", "equal_bits", "--bit-ratio", "0.3", "--epochs", "1", "--json"
    )
    assert res.returncode == 0, res.stderr
    metrics = json.loads(res.stdout)
    assert metrics["binarizer"]["params"]["bit_ratio"] == 0.3
    for r in metrics["bit_ratios"].values():  # n = 288, 576, 256 -> round(0.3 n) / n
        assert r["min"] == r["max"] and abs(r["mean"] - 0.3) < 0.002


def test_same_seed_reproduces_metrics(tmp_path: Path) -> None:
    runs = [run_cli("train", "--epochs", "2", "--binarizer", "irnet", "--json") for _ in range(2)]
    a, b = (json.loads(r.stdout) for r in runs)
    for m in (a, b):
        m.pop("train_seconds")
        for h in m["history"]:
            h.pop("seconds")
    assert a == b


def test_small_models_train_on_one_thread_large_ones_on_all() -> None:
    """digits (~2M MACs) trains on one thread; resnet18 (0.56G MACs) keeps torch's default."""
    import torch

    from bnn_export.binarizers import get
    from bnn_export.models import arch_spec
    from bnn_export.models.torch_build import build_torch_model
    from bnn_export.train_torch import auto_threads, macs_per_sample

    digits = build_torch_model(arch_spec("digits"), get("ste"))
    x = torch.zeros(1, 1, 8, 8)
    # by hand: 32*9*64 + 32*9*64*64 + 64*9*64*16 + 256*128 + 128*10
    assert macs_per_sample(digits, x) == 18432 + 1179648 + 589824 + 32768 + 1280
    assert auto_threads(digits, x) == 1
    big = build_torch_model(arch_spec("resnet18"), get("ste"))
    assert auto_threads(big, torch.zeros(1, 3, 32, 32)) == torch.get_num_threads()
