"""bnn-export: train binary neural networks and export them to LCE TFLite and ONNX.

TensorFlow must see ``TF_USE_LEGACY_KERAS=1`` before it is first imported (larq and
LCE need tf-keras, not Keras 3), so the package sets it on import.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"

__all__ = ["__version__"]
