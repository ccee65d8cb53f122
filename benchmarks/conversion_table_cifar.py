"""CIFAR-style zoo models (random weights, batch-norm statistics re-estimated on digits
resized to 3x32x32): convert to .tflite (LCE) and .onnx (onnxruntime target) and report
binary-op counts, top-1 agreement with PyTorch on the 359 digits test images, and sizes;
plus the float ResNet-18 for the size comparison.

    python -m benchmarks.conversion_table_cifar
"""

from __future__ import annotations

import torch

from bnn_export.binarizers import get
from bnn_export.checkpoint import Checkpoint
from bnn_export.convert.onnx_pipeline import convert_onnx
from bnn_export.convert.source import Source
from bnn_export.convert.tflite_pipeline import convert_tflite
from bnn_export.datasets import load_dataset
from bnn_export.models import arch_spec
from bnn_export.models.torch_build import build_torch_model, torch_state
from bnn_export.runtime.runners import LceRunner, OnnxRuntimeRunner
from bnn_export.train_torch import predict, recalibrate_batchnorm

ROWS = [("resnet20", b) for b in ("ste", "irnet", "siman", "equal_bits", "sdbnn", "gwt")] + [
    ("vgg-small", "ste"), ("vgg-small", "siman"), ("resnet18", "ste"), ("resnet18", "none"),
]  # fmt: skip


def main() -> None:
    data = load_dataset("digits").adapted((3, 32, 32))
    print("| model | binarizer | format | binary ops / binary layers | agreement (fp32 torch) | "
          "agreement fp32 vs fp64 torch | bytes |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for arch_name, b in ROWS:
        arch = arch_spec(arch_name)
        model = build_torch_model(arch, get(b), seed=0)
        model(torch.from_numpy(data.x_train[:8]))
        recalibrate_batchnorm(model, data.x_train[:512])
        ref = predict(model, data.x_test)
        with torch.no_grad():
            ref64 = model.double()(torch.from_numpy(data.x_test).double()).numpy()
        model.float()
        yard = float((ref.argmax(1) == ref64.argmax(1)).mean())
        source = Source(Checkpoint("torch", arch, get(b), "digits", torch_state(model)), "<memory>", model)
        for fmt in ("tflite", "onnx"):
            blob, facts = convert_tflite(source) if fmt == "tflite" else convert_onnx(source, target="onnxruntime")
            runner = LceRunner(blob) if fmt == "tflite" else OnnxRuntimeRunner(blob)
            got = runner.predict(data.x_test)
            agree = float((got.argmax(1) == ref.argmax(1)).mean())
            print(f"| {arch_name} | {b} | {fmt} | {facts['binary_ops']} {facts['binary_op']} / "
                  f"{facts['binary_layers'] + len(facts.get('float_fallbacks', []))} | {agree:.2%} | "
                  f"{yard:.2%} | {len(blob):,} |", flush=True)  # fmt: skip



if __name__ == "__main__":
    main()
