"""The openvino target's rule for which zero-padded binary convs OpenVINO compiles as
``BinaryConvolution`` (``runtime_rules.openvino_zero_padding_ok``) holds on AVX-512 and on
AVX2 code paths: every geometry of a grid either compiles to one BinaryConvolution (rule
True) or is exported as an exact float conv (rule False), and computes what onnxruntime's
export computes. The AVX2 run caps OpenVINO with ``OV_CPU_MAX_ISA``/``ONEDNN_MAX_CPU_ISA``
in a child process (on an AVX2-only CPU both runs use AVX2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bnn_export.convert.ops.float_layers import ConvGeometry
from bnn_export.convert.ops.runtime_rules import OPENVINO_BCONV_STEPS, openvino_zero_padding_ok

pytest.importorskip("openvino")

ROOT = Path(__file__).resolve().parents[1]

#: (kernel, stride, dilation, size): 'same' zero padding d * (k - 1) // 2, 8 channels
GRID = [
    (k, s, d, size)
    for k in (3, 5, 7, 9)
    for s in (1, 2)
    for d in (1, 2)
    for size in (1, 2, 3, 5, 7, 9)
]

CHILD = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    from tests.fuzz_models import BlockSpec, ModelSpec, build_model, input_shape, inputs
    from bnn_export.convert.graph import graph_from_torch
    from bnn_export.convert.onnx_export import openvino_float_layers, to_onnx
    from bnn_export.convert.ops import runtime_rules
    from bnn_export.errors import BnnExportError
    from bnn_export.runtime.runners import (
        OnnxRuntimeRunner, OpenVinoRunner, openvino_runtime_kernels)

    rule = runtime_rules.openvino_zero_padding_ok
    out = []
    for k, s, d, size in json.loads(sys.argv[2]):
        block = BlockSpec(8, k, s, d, True, 1, 0.0, False, "none")
        spec = ModelSpec(8, size, 8, (block,), "gap", 1, "equal_bits", 0,
                         stem_kernel=1, stem_stride=1, stem_padding=0)
        graph = graph_from_torch(build_model(spec), input_shape(spec))
        x = inputs(spec, 2)
        want = OnnxRuntimeRunner(to_onnx(graph).SerializeToString()).predict(x)
        row = {"geometry": [k, s, d, size]}
        try:
            runner = OpenVinoRunner(to_onnx(graph, target="openvino").SerializeToString())
            got = runner.predict(x)
            row["binary"] = runner.info["runtime_ops"].get("BinaryConvolution", 0)
            row["fallbacks"] = len(openvino_float_layers(graph))
            row["close"] = bool(
                np.abs(got - want).max() <= 1e-3 * max(1.0, float(np.abs(want).max()))
            )
        except BnnExportError as exc:
            row["error"] = str(exc)[:200]
        # the layer forced to BinaryConvolution whatever the rule says: does it compile?
        runtime_rules.openvino_zero_padding_ok = lambda a, shape, steps=(): True
        try:
            forced = OpenVinoRunner(to_onnx(graph, target="openvino").SerializeToString())
            kernels = [
                kernel for layer, kernel in openvino_runtime_kernels(forced.compiled)
                if layer == "BinaryConvolution"
            ]
            row["forced"] = kernels[0] if kernels else "none"
        except BnnExportError:
            row["forced"] = "refused"
        runtime_rules.openvino_zero_padding_ok = rule
        out.append(row)
    print(json.dumps(out))
    """
)


def _same(k: int, d: int) -> int:
    return d * (k - 1) // 2


def _geometry(k: int, s: int, d: int) -> ConvGeometry:
    p = _same(k, d)
    return ConvGeometry(kernel=(k, k), stride=(s, s), padding=(p, p), dilation=(d, d), groups=1)


def _rule(k: int, s: int, d: int, size: int, steps: tuple[int, ...] = OPENVINO_BCONV_STEPS) -> bool:
    return openvino_zero_padding_ok(_geometry(k, s, d), (1, 8, size, size), steps)


def test_rule_on_known_geometries() -> None:
    assert _rule(3, 1, 1, 56) and _rule(3, 2, 1, 56) and _rule(5, 1, 1, 14)  # the usual ones
    assert not _rule(5, 1, 2, 5)  # pad 4 > AVX2's 2-column step (the fuzz finding)
    assert _rule(5, 1, 2, 5, (4,))  # ... which AVX-512's 4-column step takes
    assert not _rule(5, 2, 2, 5)  # pad 4 > 3 output columns (the earlier one)
    assert not _rule(7, 1, 2, 7)  # pad 6 > 4: refused even on AVX-512
    assert not _rule(9, 2, 1, 16)  # kernel wider than 7, padded, stride 2


@pytest.mark.parametrize("isa", ["default", "AVX2"])
def test_rule_matches_what_openvino_compiles(isa: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OV_CPU_MAX_ISA", "ONEDNN_MAX_CPU_ISA")}
    if isa != "default":
        env.update(OV_CPU_MAX_ISA=isa, ONEDNN_MAX_CPU_ISA=isa)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), json.dumps(GRID)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(rows) == len(GRID)
    errors = [r for r in rows if "error" in r]
    assert not errors, errors
    wrong = [r for r in rows if not r["close"]]
    assert not wrong, wrong
    # the rule says BinaryConvolution: it is one; the rule says no: a float fallback
    mismatched = [r for r in rows if r["binary"] + r["fallbacks"] != 1]
    assert not mismatched, mismatched
    assert any(r["binary"] == 1 for r in rows) and any(r["fallbacks"] == 1 for r in rows)
    # and the rule for this run's kernel step is exactly OpenVINO's: a forced
    # BinaryConvolution compiles where it says yes and is refused where it says no
    kernels = {r["forced"] for r in rows} - {"refused"}
    assert len(kernels) == 1, kernels
    step = 4 if "avx512" in kernels.pop() else 2
    differ = [r for r in rows if (r["forced"] != "refused") != _rule(*r["geometry"], (step,))]
    assert not differ, differ
