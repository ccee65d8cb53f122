"""BinaryConv2d in onnxruntime (our op library) equals the onnx ReferenceEvaluator."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from bnn_export.convert import onnx_ops
from bnn_export.runtime import native
from bnn_export.runtime.onnx_session import onnx_session
from tests.conv_cases import EDGE_CASES, Conv, random_inputs


def _model(conv: Conv, w: np.ndarray, m: np.ndarray, b: np.ndarray) -> onnx.ModelProto:
    """BinaryConv2d -> Relu -> BinaryConv2d (1x1, grouped like the first)."""
    rng = np.random.default_rng(9)
    w2 = onnx_ops.pack_conv_weights(
        rng.choice(np.array([-1, 1], np.int8), size=(conv.group * 2, conv.o // conv.group, 1, 1))
    )
    nodes = [
        onnx_ops.make_binary_conv2d_node(["X", "W", "m", "b"], ["h"], **conv.attrs()),
        helper.make_node("Sub", ["h", "t"], ["h2"]),
        onnx_ops.make_binary_conv2d_node(
            ["h2", "W2", "m2", "b2"],
            ["Y"],
            channels_in=conv.o,
            kernel_shape=(1, 1),
            group=conv.group,
        ),
    ]
    inits = [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(m, "m"),
        numpy_helper.from_array(b, "b"),
        numpy_helper.from_array(w2, "W2"),
        numpy_helper.from_array(np.full(conv.group * 2, 0.5, np.float32), "m2"),
        numpy_helper.from_array(np.full(conv.group * 2, -1.0, np.float32), "b2"),
        numpy_helper.from_array(np.array(0.25, np.float32), "t"),
    ]
    graph = helper.make_graph(
        nodes,
        "bnn",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, conv.c, None, None])],
        [
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None] * 4),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, [None] * 4),
        ],
        initializer=inits,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(onnx_ops.DOMAIN, 1)]
    )


@pytest.mark.parametrize("conv", [EDGE_CASES[i] for i in (1, 2, 3, 4, 7, 8, 9, 14)], ids=str)
def test_session_matches_reference_evaluator(conv: Conv) -> None:
    x, _, w = random_inputs(conv, 21)
    rng = np.random.default_rng(1)
    m = rng.uniform(0.5, 2.0, conv.o).astype(np.float32)
    b = rng.standard_normal(conv.o).astype(np.float32)
    model = _model(conv, w, m, b)
    onnx.checker.check_model(model)
    want_y, want_h = ReferenceEvaluator(model, new_ops=[onnx_ops.BinaryConv2d]).run(None, {"X": x})
    got_y, got_h = onnx_session(model).run(None, {"X": x})
    np.testing.assert_array_equal(got_h, want_h)
    np.testing.assert_array_equal(got_y, want_y)
    # multiplier and bias really applied: h = b + m * acc with acc an integer
    acc = onnx_ops.binary_conv2d_accumulate(x, w, **conv.attrs()).astype(np.float32)
    np.testing.assert_array_equal(got_h, b[None, :, None, None] + m[None, :, None, None] * acc)
    assert not np.array_equal(got_h, acc)


def test_every_variant_through_onnxruntime() -> None:
    conv = EDGE_CASES[8]
    x, _, w = random_inputs(conv, 3)
    m, b = np.ones(conv.o, np.float32), np.zeros(conv.o, np.float32)
    model = _model(conv, w, m, b)
    want = ReferenceEvaluator(model, new_ops=[onnx_ops.BinaryConv2d]).run(None, {"X": x})[1]
    sess = onnx_session(model)
    for variant in native.available_kernels():
        with native.forced_kernel(variant):  # shared library state: the op follows it
            np.testing.assert_array_equal(sess.run(None, {"X": x})[1], want, variant)


def test_multithreaded_session_matches() -> None:
    conv = EDGE_CASES[13]
    x, _, w = random_inputs(conv, 4)
    m, b = np.ones(conv.o, np.float32), np.zeros(conv.o, np.float32)
    model = _model(conv, w, m, b)
    one = onnx_session(model, num_threads=1).run(None, {"X": x})
    two = onnx_session(model, num_threads=2).run(None, {"X": x})
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])


def test_bad_weight_shape_is_reported() -> None:
    conv = EDGE_CASES[1]
    x, _, w = random_inputs(conv, 0)
    m, b = np.ones(conv.o, np.float32), np.zeros(conv.o, np.float32)
    model = _model(conv, w[:, :2], m, b)  # KH of W does not match kernel_shape
    sess = onnx_session(model)
    with pytest.raises(Exception, match="BinaryConv2d: W.shape"):
        sess.run(None, {"X": x})


def test_empty_batch() -> None:
    conv = EDGE_CASES[1]
    _, _, w = random_inputs(conv, 0)
    m, b = np.ones(conv.o, np.float32), np.zeros(conv.o, np.float32)
    x = np.zeros((0, conv.c, conv.h, conv.w), np.float32)
    y, h = onnx_session(_model(conv, w, m, b)).run(None, {"X": x})
    assert h.shape == (0, conv.o, conv.h, conv.w)
    assert y.shape == (0, conv.group * 2, conv.h, conv.w)


def test_output_shape_inferred_for_static_input() -> None:
    w = onnx_ops.pack_conv_weights(np.ones((16, 35, 3, 3), np.int8))
    node = onnx_ops.make_binary_conv2d_node(
        ["X", "W", "m", "b"],
        ["Y"],
        channels_in=35,
        kernel_shape=(3, 3),
        strides=(2, 2),
        pads=(1, 1, 1, 1),
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 35, 10, 7])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        initializer=[
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(np.ones(16, np.float32), "m"),
            numpy_helper.from_array(np.zeros(16, np.float32), "b"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(onnx_ops.DOMAIN, 1)]
    )
    sess = onnx_session(model)
    assert sess.get_outputs()[0].shape == [1, 16, 5, 4]
    assert sess.run(None, {"X": np.zeros((1, 35, 10, 7), np.float32)})[0].shape == (1, 16, 5, 4)
