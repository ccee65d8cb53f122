"""PyTorch model zoo: a small binary CNN for digits and CIFAR-style ResNet-20,
ResNet-18 (Bi-Real style shortcuts) and VGG-Small.

All models keep the first and last layers full precision; every other conv (and the
digits model's hidden fully-connected layer) is a binary layer with binary inputs,
followed by batch norm. Downsampling shortcuts are float (AvgPool 2x2 + 1x1 float
conv + BN, as in Bi-Real Net); identity shortcuts add the float input.
"""

from __future__ import annotations

from torch import Tensor, nn

from bnn_export.binarizers import BinarizerConfig
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
        layers: list[nn.Module] = []
        channels = widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(
                    BiRealBlock(channels, width, stride, binarizer=binarizer, pad_value=pad_value)
                )
                channels = width
        self.layers = nn.Sequential(*layers)
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
