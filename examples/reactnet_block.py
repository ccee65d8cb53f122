"""A ReActNet block written by hand with bnn-export's layers, trained a few steps on
digits (upsampled to 16x16), exported to ONNX and run.

    python examples/reactnet_block.py [--steps N] [--tflite]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import bnn_export
from bnn_export.datasets import load_dataset


class ReActBlock(nn.Module):
    """RSign -> binary 3x3 conv -> BN (+ input) -> RPReLU, then the same with a 1x1 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        binarizer = bnn_export.BinarizerConfig("ste")
        self.sign3, self.act3 = bnn_export.RSign(channels), bnn_export.RPReLU(channels)
        self.conv3 = bnn_export.BinaryConv2d(channels, channels, 3, padding=1, binarizer=binarizer)
        self.bn3 = nn.BatchNorm2d(channels)
        self.sign1, self.act1 = bnn_export.RSign(channels), bnn_export.RPReLU(channels)
        self.conv1 = bnn_export.BinaryConv2d(channels, channels, 1, binarizer=binarizer)
        self.bn1 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act3(self.bn3(self.conv3(self.sign3(x))) + x)
        return self.act1(self.bn1(self.conv1(self.sign1(x))) + x)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--tflite", action="store_true", help="also export and check a .tflite")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, stride=2, padding=1, bias=False),  # float stem: 16x16 -> 8x8
        nn.BatchNorm2d(32),
        ReActBlock(32),
        ReActBlock(32),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    data = load_dataset("digits").adapted((1, 16, 16))
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(args.steps):
        i = (step * 64) % (len(x) - 64)
        loss = nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for suffix in [".onnx", *([".tflite"] if args.tflite else [])]:
        report = bnn_export.export(
            model, f"reactnet_block{suffix}", input_shape=(1, 16, 16),
            validation=(data.x_test, data.y_test),
        )  # fmt: skip
        logits = bnn_export.load(f"reactnet_block{suffix}").predict(data.x_test)
        print(f"{suffix}: {report.binary_ops} of {report.binary_layers} binary layers are "
              f"{report.binary_op}, agreement {report.numbers['agreement']:.2%}, "
              f"test accuracy {(logits.argmax(1) == data.y_test).mean():.2%}")  # fmt: skip


if __name__ == "__main__":
    main()
