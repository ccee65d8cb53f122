"""`bnn-export bench` on this machine: every local runtime, reports, input and option errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from bnn_export.bench.latency import LatencySettings, measure_latency, summarize
from bnn_export.bench.report import markdown_table
from bnn_export.cli import main

FAST = ["--num-runs", "5", "--warmup-runs", "1", "--min-secs", "0", "--quiet"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def bench(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["bench", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_bench_local_onnx_targets_and_checkpoint_against_reference(
    bench_artifacts, tmp_path, capsys
):
    a = bench_artifacts
    report_dir, json_out = tmp_path / "report", tmp_path / "out.json"
    models = [str(a.run), *(str(a.onnx[t]) for t in ("onnxruntime", "openvino", "reference"))]
    code, out, err = bench(
        capsys,
        *models,
        "--reference",
        str(a.run),
        "--max-eval",
        "120",
        "--report",
        str(report_dir),
        "--json",
        str(json_out),
        *FAST,
    )
    assert code == 0, err
    report = json.loads(json_out.read_text())
    assert report == json.loads((report_dir / "bench.json").read_text())
    assert (report["schema"], report["schema_version"]) == ("bnn-export-bench", 1)
    assert report["build"]["bnn_export_version"]
    assert report["build"]["git_commit"] is None or len(report["build"]["git_commit"]) >= 40
    rows = report["results"]
    assert [r["runtime"]["name"] for r in rows] == [
        "torch",
        "onnxruntime",
        "openvino",
        "onnxruntime",
    ]
    assert [r["model"]["format"] for r in rows] == ["checkpoint", "onnx", "onnx", "onnx"]
    macs = {
        (r["model"]["binary_macs"], r["model"]["float_macs"], r["model"]["binary_params"])
        for r in rows
    }
    assert len(macs) == 1  # the same network, whichever file it was read from
    binary_macs, float_macs, binary_params = macs.pop()
    assert binary_macs > 10 * float_macs > 0 and binary_params > 0
    for row in rows:
        model, latency, accuracy = row["model"], row["latency_us"], row["accuracy"]
        assert len(model["sha256"]) == 64 and model["bytes"] == os.path.getsize(
            model["path"]
            if model["format"] != "checkpoint"
            else Path(model["path"]) / "checkpoint.safetensors"
        )
        assert model["binarizer"] == "ste" and set(model["bit_ratios"]) == {"conv1", "conv2", "fc1"}
        assert row["runtime"]["version"] and row["runtime"]["threads"] == 1
        assert row["device"]["transport"] == "local" and row["device"]["emulated"] is False
        assert (
            row["device"]["cores"] == os.cpu_count() and row["device"]["arch"] == os.uname().machine
        )
        assert latency["count"] >= 5
        assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["max"]
        assert latency["init"] > 0 and latency["first_inference"] > 0
        assert accuracy["samples"] == 120 and accuracy["dataset"] == "digits"
        assert accuracy["agreement"] == 1.0, row["model"]["name"]
        assert accuracy["top1"] == rows[0]["accuracy"]["top1"]
        assert accuracy["max_abs_logit_diff"] < 1e-3
    table = (report_dir / "bench.md").read_text()
    header = table.splitlines()[0]
    # the unit is fixed (µs, like the JSON's latency_us), whatever this machine's speed
    assert "local" in header and "1 thread" in header and "latency (µs, p50)" in header
    p50s = [f"{row['latency_us']['p50']:.1f}" for row in rows]
    assert [line.rsplit("|", 2)[1].strip() for line in table.splitlines()[2:]] == p50s
    assert len(table.splitlines()) == 2 + 4 and "| `openvino.onnx` | onnx | openvino |" in table
    assert table.strip() in out
    assert (report_dir / "bench.png").read_bytes().startswith(PNG_MAGIC)


def test_bench_local_tflite_with_lce_interpreter(bench_artifacts, capsys, tmp_path):
    out_json = tmp_path / "tflite.json"
    code, out, err = bench(
        capsys,
        str(bench_artifacts.tflite),
        "--dataset",
        "digits",
        "--max-eval",
        "40",
        "--num-threads",
        "2",
        "--json",
        str(out_json),
        *FAST,
    )
    assert code == 0, err
    row = json.loads(out_json.read_text())["results"][0]
    assert row["runtime"]["name"] == "lce" and row["runtime"]["threads"] == 2
    assert row["model"]["format"] == "tflite" and row["model"]["binarizer"] is None
    # 32 -> 32 channels, 3x3, 8x8 output: the LceBconv2d; float: first conv + dense.
    assert row["model"]["binary_macs"] == 8 * 8 * 32 * 3 * 3 * 32
    assert row["model"]["float_macs"] == 8 * 8 * 32 * 3 * 3 * 1 + 32 * 10
    assert row["accuracy"]["samples"] == 40 and row["accuracy"]["agreement"] is None
    assert "2 threads" in out.splitlines()[0]


def test_bench_min_agreement_fails_a_model_that_computes_something_else(
    bench_artifacts, tmp_path, capsys
):
    # The tiny LCE model has random weights: it cannot agree with the trained run.
    json_out = tmp_path / "gate.json"
    code, out, err = bench(
        capsys,
        str(bench_artifacts.onnx["onnxruntime"]),
        str(bench_artifacts.tflite),
        "--dataset",
        "digits",
        "--reference",
        str(bench_artifacts.run),
        "--max-eval",
        "60",
        "--min-agreement",
        "0.995",
        "--json",
        str(json_out),
        *FAST,
    )
    assert code == 2
    assert "tiny lce.tflite (lce)" in err and "onnxruntime.onnx" not in err
    assert json.loads(json_out.read_text())["results"][0]["accuracy"]["agreement"] == 1.0
    assert "| `tiny lce.tflite` |" in out  # the table is still printed
    code, _, err = bench(
        capsys, str(bench_artifacts.onnx["onnxruntime"]), "--min-agreement", "0.995", *FAST
    )
    assert code == 2 and "--reference" in err


def test_bench_dataset_whose_images_do_not_fit_is_refused(
    bench_artifacts, cifar_dir, tmp_path, capsys
):
    report_dir = tmp_path / "report"
    code, out, err = bench(
        capsys,
        str(bench_artifacts.onnx["onnxruntime"]),
        "--dataset",
        f"cifar10:{cifar_dir}",
        "--report",
        str(report_dir),
        *FAST,
    )
    assert code == 2
    assert err.startswith("error: ") and err.count("error:") == 1
    assert "(3, 32, 32)" in err and "(1, 8, 8)" in err and "cifar10" in err
    assert not report_dir.exists()


def test_bench_runtime_that_cannot_run_the_file_is_refused(bench_artifacts, capsys):
    code, _, err = bench(
        capsys, str(bench_artifacts.onnx["onnxruntime"]), "--runtime", "lce", *FAST
    )
    assert code == 2 and "--runtime onnxruntime or openvino" in err


def test_bench_missing_model_file(tmp_path, capsys):
    code, _, err = bench(capsys, str(tmp_path / "absent.onnx"), *FAST)
    assert code == 2 and "no such file" in err


# ---------------------------------------------------------------- timing loop and table


def test_latency_loop_meets_both_num_runs_and_min_secs():
    calls = []
    stats = measure_latency(
        lambda: calls.append(1), LatencySettings(num_runs=3, warmup_runs=2, min_secs=0.05)
    )
    assert stats["timed_seconds"] >= 0.05  # min_secs kept it going past 3 runs
    assert stats["count"] > 3 and len(calls) == stats["count"] + 2
    stats = measure_latency(lambda: None, LatencySettings(num_runs=7, warmup_runs=0, min_secs=0))
    assert stats["count"] == 7 and stats["warmup_mean"] is None


def test_latency_statistics_from_a_fake_clock():
    durations_us = [100, 7, 3, 5, 1, 9, 2]  # first inference, then one warm-up, then 5 timed
    ticks = iter(np.cumsum([[0, d * 1000] for d in durations_us]).tolist())
    stats = measure_latency(
        lambda: None,
        LatencySettings(num_runs=5, warmup_runs=2, min_secs=0),
        clock=lambda: int(next(ticks)),
    )
    timed = [3, 5, 1, 9, 2]
    assert stats["first_inference"] == 100 and stats["warmup_mean"] == pytest.approx(53.5)
    assert stats == {**stats, **summarize(timed)}
    assert (stats["min"], stats["max"], stats["p50"]) == (1, 9, 3)
    assert stats["p90"] == pytest.approx(np.percentile(timed, 90))
    assert stats["std"] == pytest.approx(np.std(timed))


def _row(name: str, target: str, p50: float, emulated: bool) -> dict:
    return {
        "model": {
            "name": name,
            "format": "tflite",
            "bytes": 2048,
            "binary_macs": 10**6,
            "float_macs": 10,
        },
        "runtime": {"name": "lce_benchmark_model", "threads": 4},
        "device": {"target": target, "cpu": "4x Cortex-A72", "emulated": emulated},
        "latency_us": {"p50": p50, "mean": p50},
        "accuracy": {"top1": 0.5, "agreement": 1.0, "measured_on": "local"},
    }


def test_markdown_table_keeps_emulated_runs_apart_from_device_figures():
    table = markdown_table(
        {
            "results": [
                _row("a.tflite", "ssh://pi@board", 20800, False),
                _row("a.tflite", "ssh://u@qemu", 90000, True),
            ]
        }
    )
    header = table.splitlines()[0]
    assert "ssh://pi@board (4x Cortex-A72), 4 threads: latency (µs, p50)" in header
    assert "ssh://u@qemu (4x Cortex-A72) — emulated, not ARM latency, 4 threads" in header
    assert table.splitlines()[2].endswith("| 20800.0 | 90000.0 |")


def test_markdown_table_unit_is_fixed_whatever_the_speed():
    """A fast and a slow machine's tables have the same header: the unit never follows the
    figures (µs, the JSON's unit)."""
    for p50 in (3.25, 999.0, 1000.0, 2.5e6):
        table = markdown_table({"results": [_row("a.tflite", "ssh://pi@board", p50, False)]})
        assert "latency (µs, p50)" in table.splitlines()[0]
        assert table.splitlines()[2].endswith(f"| {p50:.1f} |")
    assert "50.00% (local)" in table
