"""lce_benchmark_model command line and output parsing (no device needed)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bnn_export.devices import DeviceError, build_lce_benchmark_argv, parse_lce_benchmark_output

# Layout of LCE's docs/get_started.md sample (numbers changed).
LCE_DOCS_STYLE = """\
STARTING!
Num threads: [1]
Loaded model quicknet.tflite
Initialized session in 4.2ms.
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=10 first=150000 curr=30000 min=29000 max=150000 avg=41000.5 std=35000

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=50 first=31000 curr=30500 min=29500 max=32000 avg=30750.2 std=140

Inference timings in us: Init: 4200, First inference: 150000, Warmup (avg): 41000.5, Inference (avg): 30750.2
"""  # noqa: E501

# TFLite 2.16 style: INFO: prefix, percentiles, scientific notation for large numbers.
TFLITE_INFO_STYLE = """\
INFO: STARTING!
INFO: Initialized session in 87.6ms.
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=5 first=1.3e+06 curr=1.2e+06 min=1.2e+06 max=1.3e+06 avg=1.22e+06 std=40000 p5=1.2e+06 median=1.2e+06 p95=1.3e+06

INFO: Running benchmark for at least 3 iterations and at least 0 seconds but terminate if exceeding 150 seconds.
INFO: count=3 first=1210000 curr=1190000 min=1190000 max=1210000 avg=1.19667e+06 std=9428 p5=1190000 median=1190000 p95=1210000

INFO: Inference timings in us: Init: 87639, First inference: 1300000, Warmup (avg): 1.22e+06, Inference (avg): 1.19667e+06
"""  # noqa: E501


def test_parses_timed_runs_not_warmup_in_lce_docs_layout():
    stats = parse_lce_benchmark_output(LCE_DOCS_STYLE)
    assert stats["count"] == 50
    assert (stats["min"], stats["max"], stats["mean"], stats["std"]) == (29500, 32000, 30750.2, 140)
    assert stats["first"] == 31000 and stats["curr"] == 30500
    assert stats["init"] == 4200
    assert stats["first_inference"] == 150000
    assert stats["warmup_mean"] == 41000.5
    assert stats["inference_mean"] == 30750.2
    assert "p50" not in stats


def test_parses_info_prefix_percentiles_and_scientific_notation():
    stats = parse_lce_benchmark_output(TFLITE_INFO_STYLE)
    assert stats["count"] == 3
    assert stats["mean"] == pytest.approx(1196670)
    assert (stats["p5"], stats["p50"], stats["p95"]) == (1190000, 1190000, 1210000)
    assert stats["inference_mean"] == pytest.approx(1196670)


def test_parses_logcat_prefixed_lines():
    text = "\n".join(
        f"07-14 13:14:52.099 22838 22838 I tflite  : {line}" for line in LCE_DOCS_STYLE.splitlines()
    )
    assert parse_lce_benchmark_output(text)["count"] == 50


def test_single_timed_run_prints_only_curr():
    text = (
        "Running benchmark for at least 1 iterations and at least 0 seconds\ncount=1 curr=900\n\n"
        "Running benchmark for at least 1 iterations and at least 0 seconds\ncount=1 curr=750\n\n"
        "Inference timings in us: Init: 10, First inference: 900, Warmup (avg): 900, "
        "Inference (avg): 750\n"
    )
    stats = parse_lce_benchmark_output(text)
    assert (stats["count"], stats["min"], stats["max"], stats["mean"], stats["std"]) == (
        1,
        750,
        750,
        750,
        0,
    )


def test_parses_older_average_inference_timings_line():
    text = LCE_DOCS_STYLE.replace(
        "Inference timings in us: Init: 4200, First inference: 150000, Warmup (avg): 41000.5, "
        "Inference (avg): 30750.2",
        "Average inference timings in us: Warmup: 41000.5, Init: 4200, no stats: 30750.2",
    )
    stats = parse_lce_benchmark_output(text)
    assert stats["warmup_mean"] == 41000.5
    assert stats["inference_mean"] == 30750.2
    assert "first_inference" not in stats


@pytest.mark.parametrize(
    ("output", "why"),
    [
        ("", "no 'Running benchmark for at least' line"),
        ("ERROR: Failed to mmap model m.tflite\nAborted\n", "no 'Running benchmark"),
        (LCE_DOCS_STYLE.split("count=50")[0], "no 'count=...' statistics line"),
        (LCE_DOCS_STYLE.split("Inference timings")[0], "no 'Inference timings in us'"),
        (LCE_DOCS_STYLE.replace("std=140", ""), "lacks std"),
    ],
)
def test_unparsable_output_is_a_clear_error_quoting_first_lines(output, why):
    with pytest.raises(DeviceError) as caught:
        parse_lce_benchmark_output(output)
    assert caught.value.reason == "bad-output"
    assert why in str(caught.value)
    first_line = output.strip().splitlines()[0] if output.strip() else "(empty)"
    assert f"| {first_line}" in str(caught.value)


@given(
    count=st.integers(2, 10_000),
    values=st.lists(st.integers(1, 10**9), min_size=5, max_size=5),
    std=st.integers(0, 10**6),
)
def test_round_trips_any_statistics(count, values, std):
    first, curr, low, high, init = values
    text = (
        "Running benchmark for at least 1 iterations\ncount=2 first=1 curr=1 min=1 max=1 "
        "avg=1 std=0\n\nRunning benchmark for at least 2 iterations\n"
        f"count={count} first={first} curr={curr} min={low} max={high} avg={high / 3:g} "
        f"std={std}\n\nInference timings in us: Init: {init}, First inference: 1, "
        f"Warmup (avg): 1, Inference (avg): {high / 3:g}\n"
    )
    stats = parse_lce_benchmark_output(text)
    assert (stats["count"], stats["first"], stats["curr"]) == (count, first, curr)
    assert (stats["min"], stats["max"], stats["std"], stats["init"]) == (low, high, std, init)
    assert stats["mean"] == pytest.approx(high / 3, rel=1e-5)


def test_argv_uses_tflite_benchmark_flag_names():
    argv = build_lce_benchmark_argv(
        "/opt/lce_benchmark_model",
        "/tmp/x/m.tflite",
        num_threads=4,
        num_runs=100,
        warmup_runs=5,
        min_secs=2.5,
        use_reference_bconv=True,
        use_indirect_bgemm=True,
    )
    assert argv == [
        "/opt/lce_benchmark_model",
        "--graph=/tmp/x/m.tflite",
        "--num_threads=4",
        "--num_runs=100",
        "--warmup_runs=5",
        "--min_secs=2.5",
        "--use_reference_bconv=true",
        "--use_indirect_bgemm=true",
    ]
    default = build_lce_benchmark_argv("b", "g")
    assert not any(a.startswith(("--min_secs", "--use_")) for a in default)


@pytest.mark.parametrize(
    ("option", "value"),
    [("num_threads", 0), ("num_runs", -1), ("warmup_runs", 1.5), ("num_runs", True)],
)
def test_argv_rejects_bad_settings_naming_them(option, value):
    with pytest.raises(ValueError, match=f"`{option}`"):
        build_lce_benchmark_argv("b", "g", **{option: value})
