"""Build a Larq (tf-keras) model from an arch spec and a binarizer config; its state
as named numpy arrays; rebuild from a checkpoint; load PyTorch weights into it.

State keys are ``<layer name>/<variable>`` (``conv1/kernel``, ``bn1/moving_mean``)
and ``<layer name>/<kernel|input>_quantizer/<param>`` for binarizer variables, whose
``<param>`` is the PyTorch parameter name. Kernels stay in Keras layout.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from bnn_export.binarizers import BinarizerConfig
from bnn_export.binarizers import larq_impl as bz
from bnn_export.binarizers.exports import WeightExport
from bnn_export.checkpoint import Checkpoint
from bnn_export.errors import BnnExportError
from bnn_export.models import ARCHS
from bnn_export.models import larq_zoo as zoo
from bnn_export.models.larq_layers import QuantDense1x1, is_binary_layer

QUANTIZER_ATTRS = {"kernel_quantizer": "weight_quantizer", "input_quantizer": "input_quantizer"}


def build_larq_model(
    arch: dict[str, Any], binarizer: BinarizerConfig, *, seed: int | None = None
) -> keras.Model:
    """The Keras model of ``arch`` (NHWC input (H, W, C)), built and ready to train;
    initialized from ``seed`` when given."""
    if seed is not None:
        keras.utils.set_random_seed(seed)
    with _quiet_larq():
        return _build(arch, binarizer)


@contextmanager
def _quiet_larq() -> Iterator[None]:
    """Binary layers here have no kernel constraint on purpose (PyTorch has none, and
    the trainers must match); larq would warn about that once per layer."""
    log = logging.getLogger("larq.layers_base")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _build(arch: dict[str, Any], binarizer: BinarizerConfig) -> keras.Model:
    name = arch["name"]
    kw = arch["kwargs"]
    c, h, w = kw["input_shape"]
    common: dict[str, Any] = dict(
        binarizer=binarizer, num_classes=kw["num_classes"], pad_value=kw["pad_value"]
    )
    inputs = keras.Input((h, w, c), name="input")
    if name == "digits":
        if (h, w) != (8, 8):
            raise BnnExportError(f"model 'digits' takes 8x8 inputs, got {h}x{w}")
        outputs = zoo.digits_net(inputs, **common)
    elif name == "resnet20":
        outputs = zoo.cifar_resnet(inputs, **common, widths=(16, 32, 64), blocks=(3, 3, 3))
    elif name == "resnet18":
        outputs = zoo.cifar_resnet(
            inputs, **common, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2)
        )
    elif name == "vgg-small":
        if h != w or h % 8:
            raise BnnExportError(
                f"model 'vgg-small' needs square inputs divisible by 8, got {h}x{w}"
            )
        outputs = zoo.vgg_small(inputs, **common)
    else:
        raise BnnExportError(f"no Larq builder for model {name!r}; valid: {', '.join(ARCHS)}")
    model = keras.Model(inputs, outputs, name=name.replace("-", "_"))
    for layer in binary_layers(model):
        init = getattr(layer.kernel_quantizer, "init_from_kernel", None)
        if init is not None:  # e.g. SiMaN's alpha = mean_o |w|
            init(np.asarray(tf.convert_to_tensor(layer.kernel.latent_variable)))
        layer.kernel_quantizer.bind_latent(layer.kernel.latent_variable)  # SiMaN's clipping
    return model


# --- binary layers and quantizers -----------------------------------------------------


def binary_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Layers whose kernel goes through a weight quantizer, in model order."""
    return [layer for layer in model.layers if is_binary_layer(layer)]


def quantizers(model: keras.Model) -> list[bz.WeightQuantizer | bz.ActivationQuantizer]:
    found: list[bz.WeightQuantizer | bz.ActivationQuantizer] = []
    for layer in model.layers:
        for attr in QUANTIZER_ATTRS:
            q = getattr(layer, attr, None)
            if isinstance(q, bz.WeightQuantizer | bz.ActivationQuantizer):
                found.append(q)
    return found


def set_schedule(model: keras.Model, epoch: int, epochs: int) -> None:
    for q in quantizers(model):
        q.set_schedule(epoch, epochs)


def latent_kernel(layer: keras.layers.Layer) -> np.ndarray:
    """The latent (real-valued) kernel in Keras layout; dense-as-1x1 as (I, O)."""
    kernel = np.asarray(tf.convert_to_tensor(layer.kernel.latent_variable))
    if isinstance(layer, QuantDense1x1):
        kernel = kernel.reshape(kernel.shape[-2:])
    return kernel


class FrozenKernel:
    """A kernel quantizer that returns a fixed array: a layer's quantized kernel,
    computed once (see ``freeze_quantized_kernels``), or the bits and scale bit-ratio
    fixing gave it (``export``; see ``apply_fixed_bits``)."""

    precision = 1

    def __init__(self, value: np.ndarray, export: WeightExport | None = None) -> None:
        self.value = value
        self.export = export

    def __call__(self, latent: Any) -> tf.Tensor:
        return tf.constant(self.value)


def freeze_quantized_kernels(model: keras.Model) -> None:
    """Replace every binary layer's kernel quantizer by its output, a constant (before
    LCE conversion; the model computes exactly what it computed before).

    LCE turns a conv into ``LceBconv2d`` only if its filter is a constant of +-scale per
    output channel. A quantizer evaluated in the graph must then be constant-folded by
    the converter, which it does only below a size limit: SiMaN's kernels (ranks -> bool
    -> cast -> reshape -> transpose -> * alpha) stayed in the graph from 3x3x128x256
    up, so 4 of VGG-Small's 5 binary convs became float CONV_2D ops. Kernels already
    frozen (fixed bits) stay as they are."""
    for layer in binary_layers(model):
        kernel = layer.kernel  # a larq QuantizedVariable
        if isinstance(kernel.quantizer, FrozenKernel):
            continue
        value = np.asarray(kernel.quantizer(kernel.latent_variable))
        kernel.quantizer = FrozenKernel(value)


def export_layer(layer: keras.layers.Layer) -> Any:
    """The ``WeightExport`` of one binary layer (bits in PyTorch layout): the fixed bits
    after ``apply_fixed_bits``, else what its binarizer makes of the latent kernel."""
    frozen = layer.kernel.quantizer
    if isinstance(frozen, FrozenKernel) and frozen.export is not None:
        return frozen.export
    return layer.kernel_quantizer.export(latent_kernel(layer))


def layer_bit_ratios(model: keras.Model) -> dict[str, dict[str, float]]:
    """Fraction of +1 weights per binary layer (mean/min/max over output channels)."""
    out: dict[str, dict[str, float]] = {}
    for layer in binary_layers(model):
        if not layer.kernel_quantizer.config_.binary:
            continue
        r = export_layer(layer).ratio_per_channel()
        out[layer.name] = {"mean": float(r.mean()), "min": float(r.min()), "max": float(r.max())}
    return out


# --- bit-ratio fixing and batch-norm re-estimation ------------------------------------


def fix_bit_ratios(model: keras.Model, p: float, granularity: str = "channel") -> dict[str, Any]:
    """The Larq counterpart of ``bitratio.fix_bit_ratios`` (same sort, same checks, in
    ``bitratio.fix_layers``): every binary layer's kernel becomes its OT-sorted bits times
    the binarizer's scale, in place. Returns the verified ``LayerRatio`` per layer."""
    from bnn_export.bitratio import FixableLayer, fix_layers

    layers = binary_layers(model)
    fixed = fix_layers(
        (
            FixableLayer(
                layer.name,
                bool(layer.kernel_quantizer.config_.binary),
                partial(export_layer, layer),
                partial(_score, layer),
            )
            for layer in layers
        ),
        p,
        granularity,
    )
    apply_fixed_bits(model, {name: bits for name, (bits, _) in fixed.items()})
    return {name: ratio for name, (_, ratio) in fixed.items()}


def _score(layer: keras.layers.Layer) -> np.ndarray:
    return np.asarray(layer.kernel_quantizer.score(latent_kernel(layer)))


def apply_fixed_bits(model: keras.Model, fixed: dict[str, WeightExport]) -> None:
    """Freeze each named binary layer's kernel to ``bits * scale`` (PyTorch-layout bits,
    per-output-channel scale), the way a binarizer's own kernel is bits times scale."""
    layers = {layer.name: layer for layer in binary_layers(model)}
    unknown = sorted(set(fixed) - set(layers))
    if unknown:
        raise BnnExportError(f"fixed bits for layers the model does not have: {unknown}")
    for name, export in fixed.items():
        kernel = layers[name].kernel
        bits = export.bits.astype(np.float32)
        scaled = bits * export.scale.reshape((-1,) + (1,) * (bits.ndim - 1))
        value = bz.from_torch_layout(scaled).reshape(tuple(kernel.shape)).astype(np.float32)
        kernel.quantizer = FrozenKernel(value, export)


def fixed_state(model: keras.Model) -> dict[str, np.ndarray]:
    """What ``apply_fixed_state`` needs to turn the checkpoint's model into this one, as
    named arrays (e.g. an .npz for the LCE child process): the fixed bits and scales of
    frozen layers (``<layer>/bits``, ``<layer>/scale``) and every batch norm's moving
    statistics (``<layer>/moving_mean``, ``<layer>/moving_variance``)."""
    out: dict[str, np.ndarray] = {}
    for layer in binary_layers(model):
        frozen = layer.kernel.quantizer
        if isinstance(frozen, FrozenKernel) and frozen.export is not None:
            out[f"{layer.name}/bits"] = frozen.export.bits
            out[f"{layer.name}/scale"] = frozen.export.scale
    return {**out, **batchnorm_state(model)}


def apply_fixed_state(model: keras.Model, arrays: dict[str, np.ndarray]) -> None:
    """Apply ``fixed_state`` arrays with the functions that made them in the first place
    (``apply_fixed_bits``, ``set_batchnorm_state``)."""
    bits = {k: v for k, v in arrays.items() if k.endswith(("/bits", "/scale"))}
    names = sorted({key.rsplit("/", 1)[0] for key in bits})
    missing = [
        f"{n}/{part}" for n in names for part in ("bits", "scale") if f"{n}/{part}" not in bits
    ]
    if missing:
        raise BnnExportError(f"fixed bits are incomplete: missing {missing}")
    apply_fixed_bits(
        model,
        {
            n: WeightExport(
                np.asarray(bits[f"{n}/bits"], np.int8), np.asarray(bits[f"{n}/scale"], np.float32)
            )
            for n in names
        },
    )
    set_batchnorm_state(model, {k: v for k, v in arrays.items() if k not in bits})


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def batchnorm_state(model: keras.Model) -> dict[str, np.ndarray]:
    """Every batch norm's moving statistics (``<layer>/moving_mean|moving_variance``)."""
    out: dict[str, np.ndarray] = {}
    for bn in batchnorm_layers(model):
        out[f"{bn.name}/moving_mean"] = bn.moving_mean.numpy()
        out[f"{bn.name}/moving_variance"] = bn.moving_variance.numpy()
    return out


def set_batchnorm_state(model: keras.Model, state: dict[str, np.ndarray]) -> None:
    """Assign moving statistics (from ``batchnorm_state``) to the named batch norms."""
    bns = {bn.name: bn for bn in batchnorm_layers(model)}
    for key, value in state.items():
        name, stat = key.rsplit("/", 1)
        if name not in bns or stat not in ("moving_mean", "moving_variance"):
            raise BnnExportError(f"batch-norm state {key!r} does not match the Larq model")
        variable = getattr(bns[name], stat)
        variable.assign(np.asarray(value, dtype=variable.dtype.as_numpy_dtype))


def recalibrate_batchnorm(model: keras.Model, x_nchw: np.ndarray, batch_size: int = 256) -> None:
    """Re-estimate every batch norm's moving statistics on ``x`` (NCHW, as the PyTorch
    ``models.evaluation.recalibrate_batchnorm`` takes it): each becomes the exact mean
    and (unbiased) variance over all of ``x`` of its input, computed in inference mode
    with the batch norms before it already re-estimated. Weights are untouched.

    Batch norms are done in dependency order, those with no pending one before them in
    one pass (a multi-output sub-model per pass).
    """
    x = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))
    bns = batchnorm_layers(model)
    upstream = {}
    for bn in bns:
        sub = keras.Model(model.inputs, bn.input)
        upstream[bn.name] = {la.name for la in sub.layers if la is not bn} & {b.name for b in bns}
    pending = {bn.name: bn for bn in bns}
    while pending:
        ready = [bn for name, bn in pending.items() if not upstream[name] & set(pending)]
        sub = keras.Model(model.inputs, [bn.input for bn in ready])
        stats = [_Moments() for _ in ready]
        for i in range(0, len(x), batch_size):
            outs = sub(x[i : i + batch_size], training=False)
            outs = outs if isinstance(outs, list | tuple) else [outs]
            for moments, out in zip(stats, outs, strict=True):
                moments.add(np.asarray(out))
        state: dict[str, np.ndarray] = {}
        for bn, moments in zip(ready, stats, strict=True):
            state[f"{bn.name}/moving_mean"], state[f"{bn.name}/moving_variance"] = moments.result()
            del pending[bn.name]
        set_batchnorm_state(model, state)


class _Moments:
    """Per-channel (last axis) count, mean and sum of squared deviations, merged exactly
    over batches in float64 (Chan et al.)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, batch: np.ndarray) -> None:
        rows = batch.reshape(-1, batch.shape[-1]).astype(np.float64)
        n = len(rows)
        mean = rows.mean(axis=0)
        m2 = ((rows - mean) ** 2).sum(axis=0)
        if self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = n, mean, m2
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.n * n / total)
        self.n = total

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self.mean is None or self.m2 is None or self.n < 2:
            raise BnnExportError("batch-norm re-estimation needs at least 2 values per channel")
        return self.mean.astype(np.float32), (self.m2 / (self.n - 1)).astype(np.float32)


# --- state ------------------------------------------------------------------------------


def _short(v: tf.Variable) -> str:
    return str(v.name).split("/")[-1].split(":")[0]


def _variables(model: keras.Model) -> dict[str, tf.Variable]:
    """Every model variable by its state key."""
    out: dict[str, tf.Variable] = {}
    for layer in model.layers:
        for v in [*layer._trainable_weights, *layer._non_trainable_weights]:
            key = f"{layer.name}/{_short(v)}"
            if key in out:
                raise BnnExportError(f"duplicate variable name {key!r} in the Larq model")
            out[key] = getattr(v, "latent_variable", v)
        for attr in QUANTIZER_ATTRS:
            q = getattr(layer, attr, None)
            if isinstance(q, bz.WeightQuantizer | bz.ActivationQuantizer):
                for pname, v in q.torch_params().items():
                    out[f"{layer.name}/{attr}/{pname}"] = v
    return out


def larq_state(model: keras.Model) -> dict[str, np.ndarray]:
    return {k: np.asarray(tf.convert_to_tensor(v)) for k, v in _variables(model).items()}


def load_larq_state(model: keras.Model, state: dict[str, np.ndarray], what: str) -> None:
    """Assign ``state`` (from ``larq_state``) to ``model``; every key must match."""
    variables = _variables(model)
    missing = sorted(set(variables) - set(state))
    unexpected = sorted(set(state) - set(variables))
    if missing or unexpected:
        raise BnnExportError(
            f"{what} does not match the Larq model {model.name!r}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}",
            hint="the checkpoint is corrupt or from another architecture; retrain it",
        )
    for key, v in variables.items():
        value = np.asarray(state[key])
        if tuple(value.shape) != tuple(v.shape):
            raise BnnExportError(
                f"{what}: {key!r} has shape {value.shape}, the model expects {tuple(v.shape)}",
                hint="the checkpoint is from another architecture or width; retrain it",
            )
        v.assign(value.astype(v.dtype.as_numpy_dtype))


def larq_model_from_checkpoint(ckpt: Checkpoint) -> keras.Model:
    """Rebuild a Larq model from a checkpoint and load its weights."""
    if ckpt.framework != "larq":
        raise BnnExportError(
            f"this checkpoint was trained with {ckpt.framework!r}, not Larq",
            hint="use the PyTorch loader (torch_model_from_checkpoint) for torch checkpoints",
        )
    model = build_larq_model(ckpt.arch, ckpt.binarizer)
    load_larq_state(model, ckpt.tensors, "checkpoint")
    return model


def predict(model: keras.Model, x_nchw: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits (inference mode) for NCHW float32 inputs, as the PyTorch predict takes them."""
    x = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))
    out = [
        model(x[i : i + batch_size], training=False).numpy() for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0,), dtype=np.float32)
