"""ReActNet's RPReLU fused into BinaryConv2d (its ``rprelu_shift`` / ``rprelu_slope`` /
``rprelu_bias`` inputs, docs/onnx_ops.md) for the onnxruntime target.

* the op's RPReLU epilogue, through the ctypes binding and onnxruntime, on every kernel
  variant this CPU has, 1 and 2 threads, with and without threshold and residual: bit for
  bit equal to the numpy reference and to onnxruntime running the unfused Sub, PRelu, Add
  (ties at the shift with a negative slope and a -0 bias, NaN and -inf values planted);
* reactnet-a exported for onnxruntime has no Sub / PRelu / Add left for its RPReLUs and
  computes exactly what the unfused export does (and what the reference target does, to
  float tolerance);
* malformed RPReLU inputs are refused with clear errors.
"""

from __future__ import annotations

import collections
import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from bnn_export.binarizers import get
from bnn_export.convert import onnx_ops
from bnn_export.convert.graph import graph_from_torch
from bnn_export.convert.onnx_export import to_onnx
from bnn_export.models import arch_spec
from bnn_export.models.blocks import RPReLU
from bnn_export.models.torch_build import build_torch_model
from bnn_export.runtime import native
from bnn_export.runtime.onnx_session import onnx_session
from tests.conv_cases import EDGE_CASES, Conv, random_inputs
from tests.test_kernel_variants import _variants

#: groups, padding both ways, batches > 1, several channel blocks, O not a multiple of 8
CASES = [EDGE_CASES[i] for i in (0, 2, 7, 8, 11, 14)]


def _bit_mismatch(got: np.ndarray, want: np.ndarray) -> str:
    """'' when equal bit for bit (signed zeros included; any NaN equals any NaN)."""
    if got.shape != want.shape:
        return f"shape {got.shape} != {want.shape}"
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    bad = np.argwhere(~same)
    if not bad.size:
        return ""
    at = tuple(bad[0])
    return f"{len(bad)} of {got.size} differ, first at {at}: {got[at]!r} != {want[at]!r}"


def _conv_model(
    conv: Conv,
    arrays: dict[str, np.ndarray],
    *,
    threshold: bool,
    residual: bool,
    rprelu: str,
) -> bytes:
    """One BinaryConv2d (X, and R when ``residual``, are graph inputs); ``rprelu``:
    "fused" (the op's inputs), "unfused" (Sub, PRelu, Add after the op, as the exporter
    emits without fusion) or "none"."""
    inits = {k: arrays[k] for k in ("W", "m", "b")}
    inits["empty"] = np.zeros(0, np.float32)
    if threshold:
        inits["t"] = arrays["t"]
    rp_names = None
    if rprelu == "fused":
        rp_names = ["g", "s", "z"]
        inits.update({k: arrays[k] for k in rp_names})
    inputs = onnx_ops.binary_conv2d_inputs(
        "X",
        "W",
        "m",
        "b",
        empty="empty",
        threshold="t" if threshold else None,
        residual="R" if residual else None,
        rprelu=rp_names,
    )
    out = "Y" if rprelu != "unfused" else "conv"
    nodes = [onnx_ops.make_binary_conv2d_node(inputs, [out], **conv.attrs())]
    if rprelu == "unfused":
        for k in ("g", "s", "z"):
            inits[f"{k}4"] = arrays[k].reshape(-1, 1, 1)
        nodes += [
            helper.make_node("Sub", ["conv", "g4"], ["shifted"]),
            helper.make_node("PRelu", ["shifted", "s4"], ["prelu"]),
            helper.make_node("Add", ["prelu", "z4"], ["Y"]),
        ]
    graph = helper.make_graph(
        nodes,
        "one_binary_conv_rprelu",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, conv.c, conv.h, conv.w])]
        + ([helper.make_tensor_value_info("R", TensorProto.FLOAT, [None] * 4)] if residual else []),
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None] * 4)],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(onnx_ops.DOMAIN, 1)]
    )
    model.ir_version = 8
    return model.SerializeToString()


def _edge_inputs(
    conv: Conv, with_threshold: bool, with_residual: bool
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
    """x, the op's constant inputs (W, m, b, t, g, s, z) and the residual, with the RPReLU
    edge cases planted around the shift."""
    seed = zlib.crc32(f"{conv}{with_threshold}{with_residual}".encode())
    x, _, w = random_inputs(conv, seed)
    rng = np.random.default_rng(seed)
    x = x.copy()
    x.reshape(-1)[:: max(1, x.size // 5)] = np.nan  # NaN inputs binarize to -1
    o = conv.o
    m = rng.uniform(-2, 2, o).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    t = rng.uniform(-0.5, 0.5, conv.c).astype(np.float32) if with_threshold else None
    pre = onnx_ops.binary_conv2d_reference(x, w, m, b, threshold=t, **conv.attrs())
    r = None
    if with_residual:
        r = rng.standard_normal(pre.shape).astype(np.float32)
        if pre.shape[2] * pre.shape[3] > 1:  # (not the only pixel)
            r[:, :, 0, -1] = np.nan
        if o > 3:
            r[:, 3, -1, 0] = -np.inf  # slope 0 below: 0 * -inf = NaN
        pre = onnx_ops.binary_conv2d_reference(x, w, m, b, threshold=t, residual=r, **conv.attrs())
    g = rng.standard_normal(o).astype(np.float32)
    s = rng.uniform(-1, 1, o).astype(np.float32)
    z = rng.standard_normal(o).astype(np.float32)
    # channel 0: t = 0 exactly at the first pixel, negative slope, bias -0: only
    # (t < 0 ? s * t : t) + z gives +0 there ((t > 0 ? t : s * t) + z gives -0)
    first = pre[0, 0].reshape(-1)
    g[0] = first[np.isfinite(first)][0] if np.isfinite(first).any() else 0.0
    s[0], z[0] = -0.5, -0.0
    if o > 1:  # t the smallest negative float at one pixel
        g[1] = np.nextafter(pre[0, 1].reshape(-1)[0], np.float32(np.inf))
        s[1] = -2.0
    if o > 2:
        g[2] = np.nan  # the whole channel NaN
    if o > 3:
        s[3] = 0.0
    if o > 4:  # multiplier 0: every pixel b[o] (+ residual): ties with the shift
        m[4] = 0.0
        g[4], s[4], z[4] = b[4], -1.0, -0.0
    consts = {"W": w, "m": m, "b": b, "g": g, "s": s, "z": z}
    if t is not None:
        consts["t"] = t
    return x, consts, r


@pytest.mark.parametrize(
    ("with_threshold", "with_residual"),
    [(False, False), (True, False), (False, True), (True, True)],
    ids=["plain", "threshold", "residual", "threshold+residual"],
)
@pytest.mark.parametrize("conv", CASES, ids=str)
@pytest.mark.parametrize("variant", _variants())
def test_rprelu_epilogue_is_bit_exact(
    variant: str, conv: Conv, with_threshold: bool, with_residual: bool
) -> None:
    x, c, r = _edge_inputs(conv, with_threshold, with_residual)
    t = c.get("t")
    want = onnx_ops.binary_conv2d_reference(
        x,
        c["W"],
        c["m"],
        c["b"],
        threshold=t,
        residual=r,
        rprelu_shift=c["g"],
        rprelu_slope=c["s"],
        rprelu_bias=c["z"],
        **conv.attrs(),
    )
    plain = onnx_ops.binary_conv2d_reference(
        x, c["W"], c["m"], c["b"], threshold=t, residual=r, **conv.attrs()
    )
    assert _bit_mismatch(plain, want), "the RPReLU epilogue changed nothing: a useless case"
    feeds = {"X": x, **({"R": r} if r is not None else {})}
    kinds = dict(threshold=t is not None, residual=r is not None)
    results: dict[str, np.ndarray] = {}
    for threads in (1, 2):
        fused = onnx_session(_conv_model(conv, c, **kinds, rprelu="fused"), num_threads=threads)
        unfused = onnx_session(_conv_model(conv, c, **kinds, rprelu="unfused"), num_threads=threads)
        with native.forced_kernel(variant):
            assert native.kernel_name() == variant
            results[f"native {threads} threads"] = native.binary_conv2d(
                x,
                c["W"],
                c["m"],
                c["b"],
                num_threads=threads,
                threshold=t,
                residual=r,
                rprelu_shift=c["g"],
                rprelu_slope=c["s"],
                rprelu_bias=c["z"],
                **conv.attrs(),
            )
            results[f"onnxruntime {threads} threads"] = fused.run(None, feeds)[0]
            # onnxruntime's own Sub, PRelu, Add after the op: what the fusion replaces
            results[f"onnxruntime unfused {threads} threads"] = unfused.run(None, feeds)[0]
    for what, got in results.items():
        assert not _bit_mismatch(got, want), f"{variant} {what} {conv}: " + _bit_mismatch(got, want)


def test_onnx_reference_evaluator_runs_the_rprelu_inputs() -> None:
    """The onnx.reference op (the oracle in graph form) reads the new inputs, including
    the empty placeholders before them."""
    conv = CASES[1]
    x, c, _ = _edge_inputs(conv, False, False)
    model = _conv_model(conv, c, threshold=False, residual=False, rprelu="fused")
    got = ReferenceEvaluator(model, new_ops=[onnx_ops.BinaryConv2d]).run(None, {"X": x})[0]
    want = onnx_ops.binary_conv2d_reference(
        x,
        c["W"],
        c["m"],
        c["b"],
        rprelu_shift=c["g"],
        rprelu_slope=c["s"],
        rprelu_bias=c["z"],
        **conv.attrs(),
    )
    assert not _bit_mismatch(got, want), _bit_mismatch(got, want)


# ------------------------------------------------------------------ export


@pytest.fixture(scope="module")
def reactnet_graph():  # type: ignore[no-untyped-def]
    shape = (3, 32, 32)
    model = build_torch_model(
        arch_spec("reactnet-a", input_shape=shape, width=0.25), get("ste"), seed=0
    ).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # RPReLUs away from their identity initialization
        for m in model.modules():
            if isinstance(m, RPReLU):
                m.gamma.copy_(torch.randn(m.gamma.shape, generator=gen) * 0.5)
                m.zeta.copy_(torch.randn(m.zeta.shape, generator=gen) * 0.5)
                m.prelu.weight.copy_(torch.rand(m.prelu.weight.shape, generator=gen) - 0.5)
    return graph_from_torch(model, shape)


def _ops(model) -> collections.Counter[str]:  # type: ignore[no-untyped-def]
    return collections.Counter(n.op_type for n in model.graph.node)


def test_reactnet_a_rprelus_fuse_into_the_binary_convs(reactnet_graph) -> None:  # type: ignore[no-untyped-def]
    graph = reactnet_graph
    n_rprelu = sum(1 for n in graph.nodes if n.op == "rprelu")
    assert n_rprelu == 26  # 13 blocks, two each (after the 3x3 and after the 1x1 convs)
    fused = to_onnx(graph, target="onnxruntime")
    unfused = to_onnx(graph, target="onnxruntime", fuse_rprelu=False)
    reference = to_onnx(graph, target="reference")
    for model in (unfused, reference, to_onnx(graph, target="openvino")):
        assert _ops(model)["PRelu"] == n_rprelu  # other targets / no fusion: unchanged
    ops = _ops(fused)
    assert ops["PRelu"] == ops["Sub"] == ops["Add"] == 0, ops
    convs = [n for n in fused.graph.node if n.op_type == "BinaryConv2d"]
    assert len(convs) == 31
    # every binary conv of reactnet-a ends in an RPReLU (the widening blocks' pairs share
    # one through a Concat): 9 inputs each
    assert [len(n.input) for n in convs] == [9] * 31
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    for threads in (1, 2):
        y_fused = onnx_session(fused.SerializeToString(), num_threads=threads).run(
            None, {"input": x}
        )[0]
        y_unfused = onnx_session(unfused.SerializeToString(), num_threads=threads).run(
            None, {"input": x}
        )[0]
        assert not _bit_mismatch(y_fused, y_unfused), _bit_mismatch(y_fused, y_unfused)
    y_ref = onnx_session(reference.SerializeToString(), num_threads=1).run(None, {"input": x})[0]
    scale = float(np.abs(y_ref).max())
    np.testing.assert_allclose(y_fused, y_ref, rtol=1e-4, atol=1e-4 * scale)
    assert (y_fused.argmax(1) == y_ref.argmax(1)).all()
    # the fused graph under onnx's ReferenceEvaluator (numpy oracle) too
    y_eval = ReferenceEvaluator(fused, new_ops=[onnx_ops.BinaryConv2d]).run(None, {"input": x})[0]
    np.testing.assert_allclose(y_eval, y_ref, rtol=1e-4, atol=1e-4 * scale)


def test_accumulator_export_still_fuses(reactnet_graph) -> None:  # type: ignore[no-untyped-def]
    """With the accumulators exposed (tests), the RPReLUs still fuse: the exposed tensors
    are the layers' inputs and a separate accumulator op's outputs."""
    model = to_onnx(reactnet_graph, target="onnxruntime", accumulators=True)
    assert _ops(model)["PRelu"] == 0


# ------------------------------------------------------------------ malformed inputs


def _fused_session(conv: Conv, c: dict[str, np.ndarray], rp_inputs: list[str]):  # type: ignore[no-untyped-def]
    inits = {k: c[k] for k in ("W", "m", "b", "g", "s", "z")}
    inits["empty"] = np.zeros(0, np.float32)
    node = onnx_ops.make_binary_conv2d_node(
        ["X", "W", "m", "b", "empty", "empty", *rp_inputs], ["Y"], **conv.attrs()
    )
    graph = helper.make_graph(
        [node],
        "bad_rprelu",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, conv.c, conv.h, conv.w])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None] * 4)],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(onnx_ops.DOMAIN, 1)]
    )
    model.ir_version = 8
    return onnx_session(model.SerializeToString())


def test_malformed_rprelu_inputs_are_refused() -> None:
    conv = replace(CASES[1])
    x, c, _ = _edge_inputs(conv, False, False)
    o = conv.o
    bad = {**c, "g": np.zeros(o + 1, np.float32)}
    with pytest.raises(Exception, match=rf"rprelu_shift must be 1-D with O = W.shape\[0\] = {o}"):
        _fused_session(conv, bad, ["g", "s", "z"]).run(None, {"X": x})
    bad = {**c, "z": np.zeros((o, 1), np.float32)}
    with pytest.raises(Exception, match="rprelu_bias must be 1-D"):
        _fused_session(conv, bad, ["g", "s", "z"]).run(None, {"X": x})
    with pytest.raises(Exception, match=r"must be given together \(got 2 of 3\)"):
        _fused_session(conv, c, ["g", "s"]).run(None, {"X": x})
    with pytest.raises(Exception, match=r"must be given together \(got 1 of 3\)"):
        _fused_session(conv, c, ["g"]).run(None, {"X": x})
    # the numpy reference, and the C library through ctypes
    args = (x, c["W"], c["m"], c["b"])
    with pytest.raises(ValueError, match="must be given together"):
        onnx_ops.binary_conv2d_reference(*args, rprelu_shift=c["g"], **conv.attrs())
    with pytest.raises(ValueError, match=r"rprelu_slope must have shape \["):
        onnx_ops.binary_conv2d_reference(
            *args, rprelu_shift=c["g"], rprelu_slope=c["s"][:-1], rprelu_bias=c["z"], **conv.attrs()
        )
    with pytest.raises(native.KernelError, match=r"must be given together \(got 2 of 3\)"):
        native.binary_conv2d(*args, rprelu_shift=c["g"], rprelu_bias=c["z"], **conv.attrs())
    with pytest.raises(ValueError, match="rprelu_bias needs"):
        native.binary_conv2d(
            *args, rprelu_shift=c["g"], rprelu_slope=c["s"], rprelu_bias=c["z"][:-1], **conv.attrs()
        )
