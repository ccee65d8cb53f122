"""Larq (tf-keras) trainer, mirroring ``train_torch``: the optimizer and learning-rate
schedule of ``TrainSettings`` (``bnn_export.lr_schedule``), the binarizers'
``set_schedule`` at the start of every epoch, per-epoch progress, the same history
records, and data parallelism over N devices with ``tf.distribute.MirroredStrategy``.

Optimizers (tf-keras): ``adam`` (``keras.optimizers.Adam``, the default), ``sgd``
(``SGD`` with ``momentum`` / ``nesterov``) and ``adamw`` (``AdamW``). For adam and sgd,
weight decay is PyTorch's coupled L2 (``grad += wd * w``), written as the loss term
``wd / 2 * sum(w ** 2)`` over every trainable variable except the latent kernels of
layers whose weight quantizer sets ``no_weight_decay`` and the variables its
``no_weight_decay_parameters()`` lists (SiMaN's rule): what ``torch.optim.Adam`` / ``SGD``
with ``optim_torch.param_groups`` do. For adamw it is decoupled (``w -= lr * wd * w``,
as ``torch.optim.AdamW``), with the same variables excluded. Keras' defaults differ from
PyTorch's in two places, kept as they are: Adam's epsilon is 1e-7 and added to sqrt(v)
before the bias correction (PyTorch: 1e-8, after it), and
SGD folds the learning rate into the momentum buffer (``v = m v - lr g; w += v``; PyTorch:
``b = m b + g; w -= lr b``), the same update while the rate is constant.

The default schedule (cosine per step, no warm-up) is Keras' ``CosineDecay`` as before;
any other is a table of ``lr_schedule.lr_factors`` per optimizer step. Batches are drawn
with the same ``numpy`` permutation per epoch as the PyTorch trainer.

Multi-device (``settings.devices > 1``): build the model inside ``model_scope(settings)``
so its variables are mirrored, then call ``train``. Every global batch
(``settings.batch_size``) is split into one contiguous share per replica; each replica's
loss is its share's summed cross entropy divided by the global batch size, the
weight-decay term is divided by the number of replicas, and the optimizer sums the
replicas' gradients, so a step is the one-device step. Batch norms normalise with the
global batch's statistics (Keras' ``synchronized`` batch norm); their moving variance is
then updated with the population variance of the batch, where one device's fused batch
norm uses Bessel's n/(n-1) correction (a relative difference of 1/(n-1), n = batch x
height x width). Variables a replica assigns while training (SiMaN's clipped latent
kernel, identical on every replica) are created with ``ONLY_FIRST_REPLICA`` aggregation.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from bnn_export.datasets import Dataset
from bnn_export.errors import BnnExportError
from bnn_export.lr_schedule import check_optimization, is_default_schedule, lr_factors
from bnn_export.models.larq_build import binary_layers, predict, set_schedule
from bnn_export.train_log import epoch_record, epoch_steps
from bnn_export.train_settings import TrainSettings

__all__ = [
    "TrainSettings",
    "accuracy",
    "decayed_variables",
    "distribution_strategy",
    "make_optimizer",
    "model_scope",
    "train",
]


def to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy (inference mode) on NCHW inputs."""
    return float((predict(model, x).argmax(axis=1) == y).mean())


def _excluded_ids(model: keras.Model) -> set[int]:
    excluded: set[int] = set()
    for layer in binary_layers(model):
        if layer.kernel_quantizer.no_weight_decay:
            excluded.add(id(layer.kernel.latent_variable))
        excluded.update(id(v) for v in layer.kernel_quantizer.no_weight_decay_parameters())
    return excluded


def decayed_variables(model: keras.Model) -> list[tf.Variable]:
    """Trainable variables weight decay applies to (all but no-weight-decay kernels)."""
    excluded = _excluded_ids(model)
    return [
        v for v in model.trainable_variables if id(getattr(v, "latent_variable", v)) not in excluded
    ]


# --- optimizer and schedule ------------------------------------------------------------


class TableSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The rate of each optimizer step from a precomputed table (the last entry after)."""

    def __init__(self, rates: list[float]) -> None:
        super().__init__()
        self.rates = list(rates)
        self._table = tf.constant(self.rates or [0.0], dtype=tf.float32)

    def __call__(self, step: Any) -> tf.Tensor:
        last = tf.shape(self._table, out_type=tf.int64)[0] - 1
        index = tf.minimum(tf.cast(step, tf.int64), last)
        return tf.gather(self._table, index)

    def get_config(self) -> dict[str, Any]:
        return {"rates": self.rates}


def make_optimizer(
    model: keras.Model, settings: TrainSettings, steps_per_epoch: int
) -> keras.optimizers.Optimizer:
    """The Keras optimizer and schedule of ``settings`` (see the module docstring)."""
    check_optimization(settings)
    rate: Any
    if is_default_schedule(settings):
        rate = keras.optimizers.schedules.CosineDecay(
            settings.lr, decay_steps=settings.epochs * steps_per_epoch
        )
    else:
        rate = TableSchedule([settings.lr * f for f in lr_factors(settings, steps_per_epoch)])
    if settings.optimizer == "sgd":
        return keras.optimizers.SGD(
            learning_rate=rate, momentum=settings.momentum, nesterov=settings.nesterov
        )
    if settings.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate=rate, weight_decay=settings.weight_decay)
        excluded = _excluded_ids(model)
        optimizer.exclude_from_weight_decay(
            var_list=[
                v
                for v in model.trainable_variables
                if id(getattr(v, "latent_variable", v)) in excluded
            ]
        )
        return optimizer
    return keras.optimizers.Adam(learning_rate=rate)


# --- devices ---------------------------------------------------------------------------


def distribution_strategy(devices: int) -> tf.distribute.Strategy | None:
    """A ``MirroredStrategy`` over the first ``devices`` GPUs or, without that many GPUs,
    over ``devices`` logical CPU devices; None for one device. If TensorFlow has not
    started its devices yet and the CPU is not split already, the CPU is split into
    ``devices`` logical devices here (they share the same cores: this is for runs and
    tests of the multi-device path, not for speed)."""
    if devices <= 1:
        return None
    if len(tf.config.list_physical_devices("GPU")) >= devices:
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy([d.name for d in gpus[:devices]])
    cpu = tf.config.list_physical_devices("CPU")[0]
    if tf.config.get_logical_device_configuration(cpu) is None:
        with contextlib.suppress(RuntimeError):  # TensorFlow already started its devices
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(devices)]
            )
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) >= devices:
        names = [d.name for d in cpus[:devices]]
        return tf.distribute.MirroredStrategy(
            names, cross_device_ops=tf.distribute.ReductionToOneDevice(reduce_to_device=names[0])
        )
    raise BnnExportError(
        f"--devices {devices}: TensorFlow sees {len(gpus)} GPU(s) and {len(cpus)} logical "
        "CPU device(s), and its devices were already set up",
        hint=f"pass --devices {max(len(gpus), len(cpus))} or fewer, or split the CPU with "
        "tf.config.set_logical_device_configuration before TensorFlow starts",
    )


def _replica_assignable(
    next_creator: Any, **kwargs: Any
) -> tf.Variable:  # variable_creator_scope's signature
    if kwargs.get("aggregation") in (None, tf.VariableAggregation.NONE) and kwargs.get(
        "synchronization"
    ) in (None, tf.VariableSynchronization.AUTO, tf.VariableSynchronization.ON_WRITE):
        kwargs["aggregation"] = tf.VariableAggregation.ONLY_FIRST_REPLICA
    return next_creator(**kwargs)


@contextlib.contextmanager
def model_scope(settings: TrainSettings) -> Iterator[None]:
    """Build the Keras model inside this when ``settings.devices > 1`` (its variables
    are then mirrored over the devices ``train`` uses); a no-op for one device."""
    strategy = distribution_strategy(settings.devices)
    if strategy is None:
        yield
        return
    with strategy.scope(), tf.variable_creator_scope(_replica_assignable):
        yield


class _ReplicaLocalPadding:
    """Mixed into larq convs that pad their input themselves: larq then sets ``padding``
    to "valid" around the Keras conv call (``larq.utils.patch_object``), and
    MirroredStrategy traces its replicas in concurrent threads, so one replica's patch
    would leak into another's conv. Here each thread sees its own ``padding``."""

    @property
    def padding(self) -> Any:
        own = self.__dict__[_LOCAL]
        return getattr(own, "value", self.__dict__[_SHARED])

    @padding.setter
    def padding(self, value: Any) -> None:
        self.__dict__[_LOCAL].value = value


_LOCAL, _SHARED = "_bnn_export_padding_local", "_bnn_export_padding_shared"
_REPLICA_LOCAL_CLASSES: dict[type, type] = {}


@contextlib.contextmanager
def _distributed_layers(model: keras.Model) -> Iterator[None]:
    """Layers set up for replicas: batch norm over the global batch (Keras'
    ``synchronized`` batch norm, which is the unfused one), per-thread padding for larq
    convs that pad themselves; restored afterwards."""
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved_bns = [(layer.synchronized, layer.fused) for layer in bns]
    convs = [
        layer
        for layer in model.layers
        if hasattr(layer, "_is_native_padding") and not layer._is_native_padding
    ]
    try:
        for layer in bns:
            layer.synchronized, layer.fused = True, False
        for layer in convs:
            cls = type(layer)
            if cls not in _REPLICA_LOCAL_CLASSES:
                _REPLICA_LOCAL_CLASSES[cls] = type(cls.__name__, (_ReplicaLocalPadding, cls), {})
            layer.__dict__[_SHARED] = layer.__dict__.pop("padding")
            layer.__dict__[_LOCAL] = threading.local()
            layer.__class__ = _REPLICA_LOCAL_CLASSES[cls]
        yield
    finally:
        for layer, (synchronized, fused) in zip(bns, saved_bns, strict=True):
            layer.synchronized, layer.fused = synchronized, fused
        for layer in convs:
            if _SHARED in layer.__dict__:
                layer.__class__ = type(layer).__mro__[2]
                layer.__dict__["padding"] = layer.__dict__.pop(_SHARED)
                layer.__dict__.pop(_LOCAL, None)


def _strategy_of(model: keras.Model, settings: TrainSettings) -> tf.distribute.Strategy | None:
    if settings.devices <= 1:
        return None
    strategy = model.distribute_strategy
    if strategy.num_replicas_in_sync != settings.devices:
        raise BnnExportError(
            f"devices is {settings.devices} but the model was built for "
            f"{strategy.num_replicas_in_sync} replica(s)",
            hint="build the model inside bnn_export.train_larq.model_scope(settings)",
        )
    return strategy


# --- training steps --------------------------------------------------------------------


def _coupled_decay(settings: TrainSettings) -> float:
    return settings.weight_decay if settings.optimizer in ("adam", "sgd") else 0.0


def _train_step(
    model: keras.Model, optimizer: keras.optimizers.Optimizer, weight_decay: float
) -> Any:
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    decayed = decayed_variables(model) if weight_decay > 0 else []

    @tf.function(autograph=False)
    def step(xb: tf.Tensor, yb: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            logits = model(xb, training=True)
            loss = loss_fn(yb, logits)
            total = loss
            if decayed:
                total = total + weight_decay * tf.add_n([tf.nn.l2_loss(v) for v in decayed])
        variables = model.trainable_variables
        grads = tape.gradient(total, variables)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        correct = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(logits, 1, output_type=yb.dtype), yb), tf.int32)
        )
        return loss, correct

    return step


def _distributed_step(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    weight_decay: float,
    strategy: tf.distribute.Strategy,
) -> Any:
    loss_fn = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=keras.losses.Reduction.NONE
    )
    decayed = decayed_variables(model) if weight_decay > 0 else []
    replicas = strategy.num_replicas_in_sync

    def replica_step(
        xb: tf.Tensor, yb: tf.Tensor, global_n: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            logits = model(xb, training=True)
            loss = tf.reduce_sum(loss_fn(yb, logits)) / tf.cast(global_n, logits.dtype)
            total = loss
            if decayed:
                l2 = tf.add_n([tf.nn.l2_loss(v) for v in decayed])
                total = total + weight_decay * l2 / replicas
        variables = model.trainable_variables
        grads = tape.gradient(total, variables)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        correct = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(logits, 1, output_type=yb.dtype), yb), tf.int32)
        )
        return loss, correct

    @tf.function(autograph=False, reduce_retracing=True)
    def step(xs: Any, ys: Any, global_n: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        losses, corrects = strategy.run(replica_step, args=(xs, ys, global_n))
        return (
            strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None),
            strategy.reduce(tf.distribute.ReduceOp.SUM, corrects, axis=None),
        )

    def run(xb: np.ndarray, yb: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
        x_parts = np.array_split(xb, replicas)
        y_parts = np.array_split(yb, replicas)
        xs = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(x_parts[ctx.replica_id_in_sync_group])
        )
        ys = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(y_parts[ctx.replica_id_in_sync_group])
        )
        return step(xs, ys, tf.constant(len(xb), tf.int64))

    return run


def train(model: keras.Model, data: Dataset, settings: TrainSettings) -> list[dict[str, float]]:
    """Train in place; returns the per-epoch history (same records as ``train_torch``).
    With ``settings.devices > 1`` the model must have been built in ``model_scope``."""
    check_optimization(settings)
    strategy = _strategy_of(model, settings)
    if strategy is None:
        return _train(model, data, settings, None)
    if settings.batch_size < settings.devices:
        raise BnnExportError(
            f"--batch-size {settings.batch_size} is smaller than --devices {settings.devices}",
            hint="the batch size is the global batch, split across the devices: raise it",
        )
    with _distributed_layers(model):
        return _train(model, data, settings, strategy)


def _train(
    model: keras.Model,
    data: Dataset,
    settings: TrainSettings,
    strategy: tf.distribute.Strategy | None,
) -> list[dict[str, float]]:
    keras.utils.set_random_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    steps_per_epoch = max(1, int(np.ceil(len(data.x_train) / settings.batch_size)))
    decay = _coupled_decay(settings)
    if strategy is None:
        optimizer = make_optimizer(model, settings, steps_per_epoch)
        tf_step = _train_step(model, optimizer, decay)

        def step(xb: np.ndarray, yb: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
            return tf_step(tf.constant(xb), tf.constant(yb))  # type: ignore[no-any-return]

    else:
        with strategy.scope():
            optimizer = make_optimizer(model, settings, steps_per_epoch)
        step = _distributed_step(model, optimizer, decay, strategy)
    x_all = to_nhwc(data.x_train)
    y_all = data.y_train.astype(np.int64)
    history: list[dict[str, float]] = []
    for epoch in range(settings.epochs):
        set_schedule(model, epoch, settings.epochs)
        order = rng.permutation(len(x_all))
        t0 = time.perf_counter()
        total_loss, correct = 0.0, 0
        bar = epoch_steps(epoch, settings.epochs, steps_per_epoch, progress=settings.progress)
        for i in bar:
            idx = order[i * settings.batch_size : (i + 1) * settings.batch_size]
            loss, n_correct = step(x_all[idx], y_all[idx])
            loss_value = float(loss)
            total_loss += loss_value * len(idx)
            correct += int(n_correct)
            bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
        test_acc = accuracy(model, data.x_test, data.y_test)
        record = epoch_record(
            epoch,
            settings.epochs,
            total_loss=total_loss,
            correct=correct,
            samples=len(x_all),
            test_accuracy=test_acc,
            seconds=time.perf_counter() - t0,
            progress=settings.progress,
        )
        history.append(record)
    return history
