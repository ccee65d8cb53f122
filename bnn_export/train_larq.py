"""Larq (tf-keras) trainer, mirroring ``train_torch``: Adam with a cosine learning-rate
decay over all steps, the binarizers' ``set_schedule`` at the start of every epoch,
per-epoch progress, the same history records.

Weight decay is PyTorch Adam's coupled L2 (``grad += wd * w``), written as the loss
term ``wd / 2 * sum(w ** 2)`` over every trainable variable except the latent kernels
of layers whose weight quantizer sets ``no_weight_decay`` (SiMaN's rule); this is
exactly what ``torch.optim.Adam(weight_decay=wd)`` with that parameter group does.
Batches are drawn with the same ``numpy`` permutation per epoch as the PyTorch trainer.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from bnn_export.datasets import Dataset
from bnn_export.models.larq_build import binary_layers, predict, set_schedule
from bnn_export.train_log import epoch_record, epoch_steps
from bnn_export.train_settings import TrainSettings

__all__ = ["TrainSettings", "accuracy", "decayed_variables", "train"]


def to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy (inference mode) on NCHW inputs."""
    return float((predict(model, x).argmax(axis=1) == y).mean())


def decayed_variables(model: keras.Model) -> list[tf.Variable]:
    """Trainable variables weight decay applies to (all but no-weight-decay kernels)."""
    excluded: set[int] = set()
    for layer in binary_layers(model):
        if layer.kernel_quantizer.no_weight_decay:
            excluded.add(id(layer.kernel.latent_variable))
        excluded.update(id(v) for v in layer.kernel_quantizer.no_weight_decay_parameters())
    return [
        v for v in model.trainable_variables if id(getattr(v, "latent_variable", v)) not in excluded
    ]


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


def train(model: keras.Model, data: Dataset, settings: TrainSettings) -> list[dict[str, float]]:
    """Train in place; returns the per-epoch history (same records as ``train_torch``)."""
    keras.utils.set_random_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    steps_per_epoch = max(1, int(np.ceil(len(data.x_train) / settings.batch_size)))
    schedule = keras.optimizers.schedules.CosineDecay(
        settings.lr, decay_steps=settings.epochs * steps_per_epoch
    )
    optimizer = keras.optimizers.Adam(learning_rate=schedule)
    step = _train_step(model, optimizer, settings.weight_decay)
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
            loss, n_correct = step(tf.constant(x_all[idx]), tf.constant(y_all[idx]))
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
