"""bnn-export: train binary neural networks and export them to LCE TFLite and ONNX.

The public API: put your own PyTorch network through binarize -> train -> export::

    import bnn_export

    bnn_export.binarize_(model, "ste")
    ...  # train with your own loop; bnn_export.step_schedule(model, epoch, epochs)
    bnn_export.export(model, "model.tflite", input_shape=(3, 32, 32), validation=(x, y))
    bnn_export.load("model.tflite").predict(x)

``bnn_export.binarizers()`` lists the registered binarizers.

TensorFlow must see ``TF_USE_LEGACY_KERAS=1`` before it is first imported (larq and
LCE need tf-keras, not Keras 3), so the package sets it on import. The torch-based
names are imported on first use, so ``import bnn_export`` alone stays light (the
on-device worker needs only numpy).
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"

#: public name -> the module that defines it
_PUBLIC = {
    "binarize_": "bnn_export.api",
    "step_schedule": "bnn_export.api",
    "fix_bit_ratios_": "bnn_export.api",
    "export": "bnn_export.api",
    "load": "bnn_export.api",
    "ExportReport": "bnn_export.api",
    "ExportError": "bnn_export.api",
    "Predictor": "bnn_export.api",
    "BinaryConv2d": "bnn_export.models.layers",
    "BinaryLinear": "bnn_export.models.layers",
    "RSign": "bnn_export.models.blocks",
    "RPReLU": "bnn_export.models.blocks",
    "BinarizerConfig": "bnn_export.binarizers",
    "BnnExportError": "bnn_export.errors",
    "LayerRatio": "bnn_export.bitratio",
}

__all__ = [
    "BinarizerConfig",
    "BinaryConv2d",
    "BinaryLinear",
    "BnnExportError",
    "ExportError",
    "ExportReport",
    "LayerRatio",
    "Predictor",
    "RPReLU",
    "RSign",
    "__version__",
    "binarize_",
    "binarizers",
    "export",
    "fix_bit_ratios_",
    "load",
    "step_schedule",
]

if TYPE_CHECKING:
    from bnn_export import binarizers
    from bnn_export.api import (
        ExportError,
        ExportReport,
        Predictor,
        binarize_,
        export,
        fix_bit_ratios_,
        load,
        step_schedule,
    )
    from bnn_export.binarizers import BinarizerConfig
    from bnn_export.bitratio import LayerRatio
    from bnn_export.errors import BnnExportError
    from bnn_export.models.blocks import RPReLU, RSign
    from bnn_export.models.layers import BinaryConv2d, BinaryLinear


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    if name == "binarizers":  # the registry package, also callable: binarizers()
        return importlib.import_module("bnn_export.binarizers")
    raise AttributeError(f"module 'bnn_export' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
