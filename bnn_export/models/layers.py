"""Binary layers: the single place binarizers plug into.

``BinaryConv2d`` computes exactly what an exported model computes:
``conv(pad(binarize(x), pad_value), binarize(w)) `` with the binarizer's scale, where
padding of the binarized input uses ``pad_value`` (+1, the cheap case for LCE, or 0).
With binarizer ``none`` the layer is a plain float conv (zero padding, hardtanh input).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnn_export.binarizers import BinarizerConfig
from bnn_export.binarizers import torch_impl as bz
from bnn_export.binarizers.exports import ActivationExport, WeightExport
from bnn_export.errors import BnnExportError


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class _BinaryBase(nn.Module):
    weight: nn.Parameter

    def _init_quantizers(self, config: BinarizerConfig, in_channels: int) -> None:
        self.binarizer = config
        self.weight_quantizer = bz.weight_quantizer(config, tuple(self.weight.shape))
        self.input_quantizer = bz.activation_quantizer(config, in_channels)

    @property
    def is_binary(self) -> bool:
        return self.binarizer.binary

    def quantized_weight(self) -> Tensor:
        return self.weight_quantizer(self.weight)

    def export_weights(self) -> WeightExport:
        return self.weight_quantizer.export(self.weight)

    def export_activation(self) -> ActivationExport:
        return self.input_quantizer.export()


class BinaryConv2d(_BinaryBase):
    """A 2-D convolution over binarized inputs with binarized weights.

    ``forward(x)`` computes ``conv2d(pad(q_a(x), pad_value), q_w(weight))``. The input
    quantizer ``q_a`` maps activations to -1/+1 (+1 where x >= 0, never 0; some binarizers
    first apply a float shift: SiMaN centres each sample, SD-BNN adds its SE branch or a
    per-channel threshold). The weight quantizer ``q_w`` gives ``bits * scale``: bits in
    {-1, +1} and one float scale per output channel (1 for ``ste``, ``sdbnn``, ``gwt``).
    Both come from ``binarizer`` (a ``BinarizerConfig``, e.g.
    ``bnn_export.binarizers.get("irnet")``) through ``binarizers.torch_impl``, with the
    binarizer's gradient (clipped STE, EDE, ...) and per-epoch schedule. The layer has no
    bias; batch norm follows it in the zoo models. With binarizer ``none`` it is a float
    conv over hardtanh(x), zero-padded.

    ``pad_value`` (1 or 0, default 1) is what padded positions of the *binarized* input
    hold. With 1 every tap is -1/+1, so the layer is a pure xor/popcount over bits, which
    LCE's fused 'same' padding and OpenVINO's ``BinaryConvolution`` compute directly. With
    0 padded taps add nothing, which a bit cannot express: our ONNX op corrects the border
    sums; LCE fuses it only for stride-1 'same' convs on maps at least as large as the
    kernel; OpenVINO compiles it only where the output is no smaller than the padding.
    Training pads with the same value, so what is trained is what is exported.

    Export (``bnn_export.convert``): ``.onnx --target onnxruntime`` gives one
    ``com.bnn_export::BinaryConv2d`` (bit-packed weights; the scale and the following
    batch norm folded into its per-channel multiplier and bias). Its integer accumulation
    sum(a * w) equals, bit for bit, the one this layer computes from the same binarized
    input (checked on fuzzed models by tests/test_fuzz_export.py). ``--target openvino``
    gives ``FakeQuantize(levels=2)`` + ``Conv``, which OpenVINO fuses into
    ``BinaryConvolution``; ``--target reference`` a float ``Conv`` over sign(x);
    ``.tflite`` an ``LceBconv2d``. A layer a runtime cannot binarize (docs/reliability.md)
    is exported as an exact float conv over sign(x) and named as a float fallback.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        *,
        binarizer: BinarizerConfig,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        pad_value: float = 1.0,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise BnnExportError(
                f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}"
            )
        if pad_value not in (0.0, 1.0):
            raise BnnExportError(f"pad_value must be 0 or 1, got {pad_value}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups = groups
        self.pad_value = float(pad_value)
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size)
        )
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self._init_quantizers(binarizer, in_channels)

    def forward(self, x: Tensor) -> Tensor:
        xq = self.input_quantizer(x)
        w = self.quantized_weight()
        ph, pw = self.padding
        if self.is_binary and self.pad_value != 0.0 and (ph or pw):
            xq = F.pad(xq, (pw, pw, ph, ph), value=self.pad_value)
            padding: tuple[int, int] = (0, 0)
        else:
            padding = self.padding
        return F.conv2d(xq, w, None, self.stride, padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, pad_value={self.pad_value}, binarizer={self.binarizer.name}"
        )


class BinaryLinear(_BinaryBase):
    """A fully-connected layer over binarized inputs with binarized weights.

    ``forward(x)`` computes ``linear(q_a(x), q_w(weight))`` with the input and weight
    quantizers of ``binarizer``, as in ``BinaryConv2d`` (activations -1/+1, weights
    ``bits * scale`` with one scale per output feature); no bias, no padding. With
    binarizer ``none`` it is a float linear layer over hardtanh(x).

    Export: a 1x1 binary conv, since LCE has no binary dense op: in ``.onnx
    --target onnxruntime`` ``Unsqueeze`` -> ``com.bnn_export::BinaryConv2d(kernel_shape=[1,
    1])`` -> ``Flatten``, with the same exact integer accumulation; in ``.tflite`` an
    ``LceBconv2d`` with a 1x1 kernel.
    """

    def __init__(self, in_features: int, out_features: int, *, binarizer: BinarizerConfig) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self._init_quantizers(binarizer, in_features)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.input_quantizer(x), self.quantized_weight())

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, binarizer={self.binarizer.name}"


def binary_layers(model: nn.Module) -> list[tuple[str, _BinaryBase]]:
    """All binary layers of a model, in definition order, with their qualified names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BinaryBase)]
