from pathlib import Path

from bnn_export import binarizers
from bnn_export.bitratio import fix_bit_ratios
from bnn_export.convert.graph import graph_from_torch
from bnn_export.convert.onnx_export import to_onnx
from bnn_export.datasets import load_dataset
from bnn_export.models import arch_spec
from bnn_export.models.evaluation import predict, recalibrate_batchnorm
from bnn_export.models.torch_build import build_torch_model
from bnn_export.runtime.runners import open_runner
from bnn_export.train_settings import TrainSettings
from bnn_export.train_torch import train

data = load_dataset("digits")  # scikit-learn's 8x8 digits, scaled to [-1, 1]; no download
model = build_torch_model(arch_spec("digits"), binarizers.get("ste"), seed=0)
train(model, data, TrainSettings(epochs=3, progress=False))  # Adam + cosine, in place

ratios = fix_bit_ratios(model, 0.5)  # exactly half of each channel's weights become +1
recalibrate_batchnorm(model, data.x_train)  # batch norm sees the fixed bits' outputs

graph = graph_from_torch(model, data.input_shape)
Path("digits.onnx").write_bytes(to_onnx(graph, target="onnxruntime").SerializeToString())
logits = open_runner("digits.onnx").predict(data.x_test)  # our xor/popcount BinaryConv2d

torch_top1 = predict(model, data.x_test).argmax(1)
print(f"{len(ratios)} binary layers fixed at p = 0.5")
print(f"test accuracy {(logits.argmax(1) == data.y_test).mean():.2%}")
print(f"top-1 agreement with PyTorch {(logits.argmax(1) == torch_top1).mean():.2%}")
