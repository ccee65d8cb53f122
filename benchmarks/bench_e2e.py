"""End to end, 1 thread, one run: a binary network through bnn-export's ONNX path vs the
same architecture as a float network in onnxruntime (and the binary one in OpenVINO).

Both models come from the zoo with random weights and batch-norm statistics re-estimated
on digits (latency does not depend on the values). Timed interleaved, median of N runs,
batch 1, 3x32x32 input.

Run: python benchmarks/bench_e2e.py [--model resnet18] [--runs N]
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.bench_kernels import interleaved_median_ms
from bnn_export.binarizers import get
from bnn_export.convert.graph import graph_from_torch
from bnn_export.convert.onnx_export import to_onnx
from bnn_export.datasets import load_dataset
from bnn_export.models import arch_spec
from bnn_export.models.evaluation import recalibrate_batchnorm
from bnn_export.models.torch_build import build_torch_model
from bnn_export.runtime.runners import OnnxRuntimeRunner, OpenVinoRunner


def onnx_bytes(model_name: str, binarizer: str, target: str) -> bytes:
    arch = arch_spec(model_name)
    shape = tuple(arch["kwargs"]["input_shape"])
    model = build_torch_model(arch, get(binarizer), seed=0)
    recalibrate_batchnorm(model, load_dataset("digits").adapted(shape).x_train[:128])
    return to_onnx(graph_from_torch(model, shape), target=target).SerializeToString()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    ours = OnnxRuntimeRunner(onnx_bytes(args.model, "ste", "onnxruntime"))
    floating = OnnxRuntimeRunner(onnx_bytes(args.model, "none", "reference"))
    ov = OpenVinoRunner(onnx_bytes(args.model, "ste", "openvino"))
    x = np.random.default_rng(0).standard_normal((1, *ours.input_shape)).astype(np.float32)
    times = interleaved_median_ms(
        {
            "ours": lambda: ours.predict_one(x),
            "float": lambda: floating.predict_one(x),
            "openvino": lambda: ov.predict_one(x),
        },
        args.runs,
    )
    print(f"{args.model}, batch 1, 1 thread, median of {args.runs} interleaved runs:")
    print(f"  binary, bnn-export ONNX (BinaryConv2d) in onnxruntime: {times['ours']:8.2f} ms")
    print(f"  binary, FakeQuantize+Conv in OpenVINO:                 {times['openvino']:8.2f} ms")
    print(f"  float, same architecture, onnxruntime:                 {times['float']:8.2f} ms")
    print(
        f"  speed-up over float onnxruntime: {times['float'] / times['ours']:.2f}x (target >= 4x)"
    )
    print(f"  speed-up over binary OpenVINO:   {times['openvino'] / times['ours']:.2f}x")


if __name__ == "__main__":
    main()
