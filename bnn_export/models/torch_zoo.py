"""PyTorch model zoo: a small binary CNN for digits, CIFAR-style ResNet-20, ResNet-18
(Bi-Real style shortcuts) and VGG-Small, and the ImageNet-layout BNNs of the literature:
Bi-Real Net-18, ReActNet-A and QuickNet (small).

All models keep the first and last layers full precision; every other conv (and the
digits model's hidden fully-connected layer) is a binary layer with binary inputs,
followed by batch norm. Downsampling shortcuts are float (AvgPool 2x2 + 1x1 float
conv + BN, as in Bi-Real Net); identity shortcuts add the float input.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bnn_export.binarizers import BinarizerConfig
from bnn_export.models.blocks import RPReLU, RSign
from bnn_export.models.layers import BinaryConv2d, BinaryLinear


class DigitsNet(nn.Module):
    """1x8x8 -> float conv 32 -> bconv 64 -> pool -> bconv 64 -> pool -> bdense 128 -> dense."""

    def __init__(
        self,
        *,
        binarizer: BinarizerConfig,
        num_classes: int,
        in_channels: int,
        pad_value: float,
        width: int = 64,
    ) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(in_channels, 32, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(32)
        self.conv1 = BinaryConv2d(32, width, 3, padding=1, binarizer=binarizer, pad_value=pad_value)
        self.bn1 = nn.BatchNorm2d(width)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = BinaryConv2d(
            width, width, 3, padding=1, binarizer=binarizer, pad_value=pad_value
        )
        self.bn2 = nn.BatchNorm2d(width)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = BinaryLinear(width * 2 * 2, 128, binarizer=binarizer)
        self.bn3 = nn.BatchNorm1d(128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn0(self.conv0(x))
        x = self.pool1(self.bn1(self.conv1(x)))
        x = self.pool2(self.bn2(self.conv2(x)))
        x = self.bn3(self.fc1(self.flatten(x)))
        return self.fc2(x)


class Downsample(nn.Module):
    """Float shortcut for a change of resolution/width: AvgPool(stride) -> 1x1 conv -> BN."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(self.pool(x)))


class BiRealBlock(nn.Module):
    """Basic block with a shortcut around each binary conv (Bi-Real Net)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        *,
        binarizer: BinarizerConfig,
        pad_value: float,
    ) -> None:
        super().__init__()
        self.conv1 = BinaryConv2d(
            in_channels,
            out_channels,
            3,
            stride=stride,
            padding=1,
            binarizer=binarizer,
            pad_value=pad_value,
        )
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.shortcut = (
            Downsample(in_channels, out_channels, stride)
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )
        self.conv2 = BinaryConv2d(
            out_channels, out_channels, 3, padding=1, binarizer=binarizer, pad_value=pad_value
        )
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x)) + self.shortcut(x)
        return self.bn2(self.conv2(out)) + out


class CifarResNet(nn.Module):
    def __init__(
        self,
        *,
        binarizer: BinarizerConfig,
        num_classes: int,
        in_channels: int,
        pad_value: float,
        widths: tuple[int, ...],
        blocks: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(widths[0])
        self.layers, channels = _birealnet_stages(
            widths[0], widths, blocks, binarizer=binarizer, pad_value=pad_value
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(self.bn0(self.conv0(x)))
        return self.fc(self.flatten(self.pool(x)))


class VGGSmall(nn.Module):
    """(2x128C3)-MP2-(2x256C3)-MP2-(2x512C3)-MP2-FC; first conv float, the rest binary."""

    def __init__(
        self,
        *,
        binarizer: BinarizerConfig,
        num_classes: int,
        in_channels: int,
        pad_value: float,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        cfg = [(128, False), (128, True), (256, False), (256, True), (512, False), (512, True)]
        self.conv0 = nn.Conv2d(in_channels, cfg[0][0], 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(cfg[0][0])
        layers: list[nn.Module] = []
        channels = cfg[0][0]
        for width, pool in cfg[1:]:
            layers.append(
                BinaryConv2d(
                    channels, width, 3, padding=1, binarizer=binarizer, pad_value=pad_value
                )
            )
            if pool:
                layers.append(nn.MaxPool2d(2))
            layers.append(nn.BatchNorm2d(width))
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        side = input_size // 8
        self.fc = nn.Linear(channels * side * side, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(self.bn0(self.conv0(x)))
        return self.fc(self.flatten(x))


def _scaled(channels: int, width: float) -> int:
    """``channels * width``, rounded, at least 1 (``--width`` for small test models)."""
    return max(1, int(round(channels * width)))


def _birealnet_stages(
    channels: int, widths: tuple[int, ...], blocks: tuple[int, ...], **kw: Any
) -> tuple[nn.Sequential, int]:
    """Bi-Real blocks: stage 0 keeps the resolution, later stages halve it first."""
    layers: list[nn.Module] = []
    for stage, (width, count) in enumerate(zip(widths, blocks, strict=True)):
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            layers.append(BiRealBlock(channels, width, stride, **kw))
            channels = width
    return nn.Sequential(*layers), channels


class BiRealNet18(nn.Module):
    """Bi-Real Net-18 for ImageNet-size inputs.

    Liu, Wu, Luo, Yang, Liu, Cheng, "Bi-Real Net: Enhancing the Performance of 1-bit CNNs
    with Improved Representational Capability and Advanced Training Algorithm", ECCV 2018:
    a ResNet-18 whose every binary 3x3 conv has its own real-valued shortcut (four stages
    of two blocks of two binary convs; widths 64, 128, 256, 512), downsampling shortcuts
    AvgPool 2x2 -> 1x1 float conv -> BN, the ImageNet stem (7x7/2 float conv, BN,
    3x3/2 max pool with padding 1) and a float classifier after global average pooling.
    """

    def __init__(
        self,
        *,
        binarizer: BinarizerConfig,
        num_classes: int,
        in_channels: int,
        pad_value: float,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        widths = tuple(_scaled(c, width) for c in (64, 128, 256, 512))
        self.conv0 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn0 = nn.BatchNorm2d(widths[0])
        self.pool0 = nn.MaxPool2d(3, stride=2, padding=1)
        self.layers, channels = _birealnet_stages(
            widths[0], widths, (2, 2, 2, 2), binarizer=binarizer, pad_value=pad_value
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool0(self.bn0(self.conv0(x)))
        return self.fc(self.flatten(self.pool(self.layers(x))))


class ReActBlock(nn.Module):
    """ReActNet-A's block (a MobileNetV1 depthwise/pointwise pair made binary):

    RSign -> binary 3x3 conv (stride s) -> BN, plus the input (average-pooled when
    s = 2), -> RPReLU; then RSign -> binary 1x1 conv -> BN plus its input -> RPReLU.
    Where the width doubles, the 1x1 part is two binary 1x1 convs of the same input,
    each with the input as shortcut, concatenated on channels.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        *,
        binarizer: BinarizerConfig,
        pad_value: float,
    ) -> None:
        super().__init__()
        if out_channels not in (in_channels, 2 * in_channels):
            raise ValueError(f"ReActBlock widens x1 or x2, got {in_channels}->{out_channels}")

        def bconv(cin: int, cout: int, k: int, stride: int = 1) -> BinaryConv2d:
            return BinaryConv2d(
                cin,
                cout,
                k,
                stride=stride,
                padding=k // 2,
                binarizer=binarizer,
                pad_value=pad_value,
            )

        # the float twin (a non-binary binarizer, e.g. "none") has no sign activations:
        # it is the real-valued network the binary one is compared with
        self.sign3: nn.Module = RSign(in_channels) if binarizer.binary else nn.Identity()
        self.conv3 = bconv(in_channels, in_channels, 3, stride)
        self.bn3 = nn.BatchNorm2d(in_channels)
        self.shortcut3 = nn.AvgPool2d(2) if stride == 2 else nn.Identity()
        self.act3 = RPReLU(in_channels)
        self.sign1: nn.Module = RSign(in_channels) if binarizer.binary else nn.Identity()
        self.doubled = out_channels == 2 * in_channels
        self.conv1 = bconv(in_channels, in_channels if self.doubled else out_channels, 1)
        self.bn1 = nn.BatchNorm2d(self.conv1.out_channels)
        if self.doubled:
            self.conv1b = bconv(in_channels, in_channels, 1)
            self.bn1b = nn.BatchNorm2d(in_channels)
        self.act1 = RPReLU(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act3(self.bn3(self.conv3(self.sign3(x))) + self.shortcut3(x))
        s = self.sign1(x)
        out = self.bn1(self.conv1(s)) + x
        if self.doubled:
            out = torch.cat([out, self.bn1b(self.conv1b(s)) + x], dim=1)
        return self.act1(out)


#: ReActNet-A's widths after the stem (MobileNetV1's), a stride-2 block where they grow
#: past 64
REACTNET_WIDTHS = (64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)


class ReActNetA(nn.Module):
    """ReActNet-A.

    Liu, Shen, Savvides, Xing, Cheng, "ReActNet: Towards Precise Binary Neural Network
    with Generalized Activation Functions", ECCV 2020: the MobileNetV1 layout (3x3/2
    float stem conv with 32 channels, then 13 blocks to 1024 channels, four of them
    stride 2) with every depthwise/pointwise conv replaced by a binary 3x3 / 1x1 conv
    (``ReActBlock``), RSign before and RPReLU after every binary conv, and channel
    doubling by two concatenated 1x1 binary convs; global average pooling and a float
    classifier.
    """

    def __init__(
        self,
        *,
        binarizer: BinarizerConfig,
        num_classes: int,
        in_channels: int,
        pad_value: float,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        channels = _scaled(32, width)
        self.conv0 = nn.Conv2d(in_channels, channels, 3, stride=2, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(channels)
        blocks: list[nn.Module] = []
        for base in REACTNET_WIDTHS:
            out = 2 * channels if _scaled(base, width) > channels else channels
            stride = 2 if out > channels and base > 64 else 1
            blocks.append(
                ReActBlock(channels, out, stride, binarizer=binarizer, pad_value=pad_value)
            )
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.bn0(self.conv0(x)))
        return self.fc(self.flatten(self.pool(x)))


class QuickNet(nn.Module):
    """QuickNet (the small variant), Larq's fast ImageNet BNN.

    Bannink et al., "Larq Compute Engine: Design, Benchmark and Deploy State-of-the-Art
    Binarized Neural Networks", MLSys 2021, and the larq-zoo QuickNet description: a float
    stem (3x3/2 conv to a quarter of the first width, BN, ReLU, 3x3/2 depthwise conv, BN,
    1x1 conv, BN); four sections of four residual blocks ``x + BN(ReLU(bconv3x3(x)))``
    with widths 32, 64, 256, 512 (QuickNetSmall); float transitions between sections
    (ReLU, 3x3/2 max pool with padding 1, 3x3 depthwise conv, BN, 1x1 conv, BN); ReLU,
    global average pooling and a float classifier.
    """

    def __init__(
        self,
        *,
        binarizer: BinarizerConfig,
        num_classes: int,
        in_channels: int,
        pad_value: float,
        width: float = 1.0,
        section_blocks: tuple[int, ...] = (4, 4, 4, 4),
        section_widths: tuple[int, ...] = (32, 64, 256, 512),
    ) -> None:
        super().__init__()
        widths = [_scaled(c, width) for c in section_widths]
        stem = max(1, widths[0] // 4)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(),
            nn.Conv2d(stem, stem, 3, stride=2, padding=1, groups=stem, bias=False),
            nn.BatchNorm2d(stem),
            nn.Conv2d(stem, widths[0], 1, bias=False),
            nn.BatchNorm2d(widths[0]),
        )
        sections: list[nn.Module] = []
        channels = widths[0]
        for i, (count, width_i) in enumerate(zip(section_blocks, widths, strict=True)):
            if i > 0:
                sections.append(QuickNetTransition(channels, width_i))
                channels = width_i
            sections += [
                QuickNetBlock(channels, binarizer=binarizer, pad_value=pad_value)
                for _ in range(count)
            ]
        self.sections = nn.Sequential(*sections)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.sections(self.stem(x))
        return self.fc(self.flatten(self.pool(self.relu(x))))


class QuickNetBlock(nn.Module):
    """``x + BN(ReLU(bconv3x3(x)))``."""

    def __init__(self, channels: int, *, binarizer: BinarizerConfig, pad_value: float) -> None:
        super().__init__()
        self.conv = BinaryConv2d(
            channels, channels, 3, padding=1, binarizer=binarizer, pad_value=pad_value
        )
        self.relu = nn.ReLU()
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bn(self.relu(self.conv(x)))


class QuickNetTransition(nn.Module):
    """ReLU -> 3x3/2 max pool (padding 1) -> 3x3 depthwise conv -> BN -> 1x1 conv -> BN."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn1(self.depthwise(self.pool(self.relu(x))))
        return self.bn2(self.pointwise(x))
