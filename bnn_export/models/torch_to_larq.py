"""Load a PyTorch model's weights (its ``state_dict`` as numpy) into the Larq model of
the same architecture, so both compute the same logits.

Layouts: conv OIHW -> HWIO; Linear (O, I) -> (I, O), and for a dense layer right
after a ``Flatten`` of a (C, H, W) map, the input features are reordered from
PyTorch's C-major flatten to Keras' channels-last flatten. Batch norm: weight ->
gamma, bias -> beta, running_mean/var -> moving_mean/variance. Binarizer parameters
(``<layer>.weight_quantizer.<p>``, ``<layer>.input_quantizer.<p>``) go to the
quantizer's variable of the same PyTorch name.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import tensorflow as tf
import tf_keras as keras

from bnn_export.binarizers import larq_impl as bz
from bnn_export.errors import BnnExportError
from bnn_export.models.larq_build import QUANTIZER_ATTRS
from bnn_export.models.larq_layers import QuantDense1x1, is_binary_layer
from bnn_export.models.larq_zoo import kname

_BN = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_variance",
}
_IGNORED = {"num_batches_tracked"}


def _flatten_source(layer: keras.layers.Layer) -> tuple[int, int, int] | None:
    """(H, W, C) of the map a Flatten feeds into ``layer``, if any."""
    inbound = layer._inbound_nodes[0].inbound_layers
    if isinstance(inbound, keras.layers.Flatten):
        h, w, c = inbound.input_shape[1:]
        return int(h), int(w), int(c)
    return None


def _flatten_perm(layer: keras.layers.Layer) -> np.ndarray | None:
    """For each Keras (H, W, C)-flattened input feature, its PyTorch (C, H, W) index."""
    src = _flatten_source(layer)
    if src is None or (src[0] == 1 and src[1] == 1):
        return None
    h, w, c = src
    return np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)


def _dense_kernel(layer: keras.layers.Layer, weight: np.ndarray) -> np.ndarray:
    """Torch Linear weight (O, I) -> Keras kernel (I, O) in the Keras input order."""
    perm = _flatten_perm(layer)
    if perm is not None:
        weight = weight[:, perm]
    return np.ascontiguousarray(weight.T)


def _assign(var: object, value: np.ndarray, key: str) -> None:
    shape = tuple(var.shape)  # type: ignore[attr-defined]
    if tuple(value.shape) != shape:
        raise BnnExportError(
            f"PyTorch tensor {key!r} has shape {value.shape} (after layout change), "
            f"the Larq layer expects {shape}",
            hint="build both models from the same arch spec",
        )
    var.assign(value.astype(np.float32))  # type: ignore[attr-defined]


def _load_layer(layer: keras.layers.Layer, params: dict[str, np.ndarray], prefix: str) -> None:
    if isinstance(layer, keras.layers.BatchNormalization):
        for tname, value in params.items():
            if tname not in _BN:
                raise BnnExportError(f"unexpected batch-norm tensor {prefix}.{tname}")
            _assign(getattr(layer, _BN[tname]), value, f"{prefix}.{tname}")
        return
    if not hasattr(layer, "kernel"):
        raise BnnExportError(
            f"PyTorch module {prefix!r} maps to Larq layer {layer.name!r}, which has no weights"
        )
    kernel = getattr(layer.kernel, "latent_variable", layer.kernel)
    for tname, value in params.items():
        key = f"{prefix}.{tname}"
        if tname == "weight":
            if isinstance(layer, QuantDense1x1):
                _assign(kernel, _dense_kernel(layer, value)[None, None], key)
            elif value.ndim == 2:
                _assign(kernel, _dense_kernel(layer, value), key)
            else:
                _assign(kernel, bz.from_torch_layout(value), key)
        elif tname == "bias" and getattr(layer, "bias", None) is not None:
            _assign(layer.bias, value, key)
        else:
            raise BnnExportError(f"unexpected tensor {key!r} for Larq layer {layer.name!r}")


def load_torch_state_into_larq(model: keras.Model, state: dict[str, np.ndarray]) -> None:
    """Copy a PyTorch ``state_dict`` (numpy arrays) into ``model`` (same arch, binarizer)."""
    layers = {layer.name: layer for layer in model.layers}
    grouped: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    quantizer_params: list[tuple[str, str, str, np.ndarray]] = []
    for key, value in state.items():
        arr = np.asarray(value)
        for attr, torch_attr in QUANTIZER_ATTRS.items():
            marker = f".{torch_attr}."
            if marker in key:
                module, pname = key.split(marker, 1)
                quantizer_params.append((module, attr, pname, arr))
                break
        else:
            module, _, tname = key.rpartition(".")
            if tname not in _IGNORED:
                grouped[module][tname] = arr
    loaded: set[str] = set()
    for module, params in grouped.items():
        name = kname(module)
        if name not in layers:
            raise BnnExportError(
                f"PyTorch module {module!r} has no Larq layer {name!r} in {model.name!r}",
                hint="build both models from the same arch spec",
            )
        _load_layer(layers[name], params, module)
        loaded.add(name)
    for module, attr, pname, arr in quantizer_params:
        layer = layers.get(kname(module))
        quantizer = getattr(layer, attr, None)
        variables = quantizer.torch_params() if quantizer is not None else {}
        if quantizer is None or pname not in variables:
            raise BnnExportError(
                f"PyTorch binarizer tensor {module}.{QUANTIZER_ATTRS[attr]}.{pname} has no "
                f"Larq counterpart",
                hint="build both models with the same binarizer",
            )
        axis = quantizer.input_channel_axis.get(pname)
        perm = _flatten_perm(layer)
        if axis is not None and perm is not None:
            arr = np.take(arr, perm, axis=axis)
        _assign(variables[pname], arr, f"{module}.{pname}")
    for layer in model.layers:
        if is_binary_layer(layer):
            kernel = np.asarray(tf.convert_to_tensor(layer.kernel.latent_variable))
            layer.kernel_quantizer.on_weights_loaded(kernel)
            layer.input_quantizer.on_weights_loaded(kernel)
    unloaded = [
        layer.name
        for layer in model.layers
        if layer._trainable_weights and layer.name not in loaded
    ]
    if unloaded:
        raise BnnExportError(
            f"no PyTorch weights for Larq layers {unloaded[:5]}",
            hint="build both models from the same arch spec",
        )
