"""Training data as PyTorch datasets: augmentation, normalisation, streaming image folders.

``training_data(spec)`` gives a :class:`TrainingData`: a training dataset (augmented when
the dataset has a standard augmentation and ``augment`` is on), a deterministic test
dataset, and a JSON-able ``preprocessing`` record for the checkpoint header.

Every random choice an augmentation makes comes from a numpy Generator seeded with
``(seed, epoch, index)`` inside ``__getitem__``: a sample is the same whichever
DataLoader worker or DDP rank loads it, and a resumed run sees the same samples as an
uninterrupted one. Call ``train.set_epoch(epoch)`` before iterating each epoch; the epoch
lives in shared memory, so persistent DataLoader workers see it too.

The test dataset's images are exactly the numpy side's (``bnn_export.datasets``) test
images, which convert and bench validate on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from bnn_export import imagefolder
from bnn_export.datasets import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    adapt,
    load_dataset,
    normalize_mean_std,
)

#: Mixed into every augmentation seed so these streams differ from other uses of ``seed``.
_AUGMENT_STREAM = 0x6175_6700

#: CIFAR-10's standard augmentation: random 32x32 crop of the image zero-padded by 4 pixels
#: (black, i.e. raw pixel value 0, before normalisation), then a horizontal flip with p=0.5.
CIFAR10_PADDING = 4
CIFAR10_AUGMENT: list[dict[str, Any]] = [
    {"op": "random_crop", "padding": CIFAR10_PADDING, "fill": "black (raw pixel 0)"},
    {"op": "horizontal_flip", "p": 0.5},
]


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The Generator for one sample's augmentation: a function of (seed, epoch, index) only.

    Counter-based (Philox): the key is (seed, a constant for this use), the counter starts
    at (0, 0, index, epoch), so every sample of every epoch has a stream of its own, and
    making one is cheap (no seed hashing)."""
    key = np.array([seed % 2**64, _AUGMENT_STREAM], dtype=np.uint64)
    counter = np.array([0, 0, index, epoch], dtype=np.uint64)
    return np.random.Generator(np.random.Philox(key=key, counter=counter))


class EpochDataset(TorchDataset[tuple[torch.Tensor, int]]):
    """A dataset whose samples may depend on the epoch (``set_epoch``) and a seed.

    The epoch is kept in a shared-memory tensor so DataLoader worker processes (also
    persistent ones) see ``set_epoch`` calls made in the main process.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s augmentation from now on (call before iterating each epoch)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def rng(self, index: int) -> np.random.Generator:
        """The Generator for sample ``index`` in the current epoch."""
        return sample_rng(self.seed, self.epoch, index)


def crop_flip(
    image: np.ndarray, rng: np.random.Generator, padding: int, fill: np.ndarray
) -> np.ndarray:
    """Random crop of ``image`` (C, H, W) padded by ``padding`` with per-channel ``fill``,
    back to (H, W), then a horizontal flip with probability 0.5. One draw of three
    uniforms: the row offset, the column offset (both uniform in 0..2*padding) and the
    flip."""
    c, h, w = image.shape
    u = rng.random(3)
    dy, dx = int(u[0] * (2 * padding + 1)), int(u[1] * (2 * padding + 1))
    flip = bool(u[2] < 0.5)
    padded = np.empty((c, h + 2 * padding, w + 2 * padding), dtype=image.dtype)
    padded[...] = fill.reshape(c, 1, 1)
    padded[:, padding : padding + h, padding : padding + w] = image
    out = padded[:, dy : dy + h, dx : dx + w]
    if flip:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)


class ArrayDataset(EpochDataset):
    """Images held in memory as float32 NCHW (already preprocessed), optionally augmented
    per sample at their own resolution, then adapted to ``input_shape``."""

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        input_shape: tuple[int, int, int],
        augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        self.x, self.y = x, y
        c, h, w = (int(v) for v in input_shape)
        self.input_shape = (c, h, w)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index = range(len(self))[index]  # a plain int in range (IndexError otherwise)
        image = self.x[index]
        if self.augment is not None:
            image = self.augment(image, self.rng(index))
        if tuple(image.shape) != self.input_shape:
            image = adapt(image[None], self.input_shape)[0]
        return torch.from_numpy(np.array(image, dtype=np.float32, copy=True)), int(self.y[index])


@dataclass(frozen=True)
class TrainingData:
    """What a trainer needs: datasets, their shape, and the preprocessing record."""

    spec: str
    train: torch.utils.data.Dataset  # items (float32 CHW, int)
    test: torch.utils.data.Dataset  # evaluation transform
    num_classes: int
    input_shape: tuple[int, int, int]
    preprocessing: dict[str, Any]  # JSON-able; recorded in the checkpoint header


class ImageFolderDataset(EpochDataset):
    """One split of an ``imagefolder:DIR`` tree, decoded from disk per sample (only the
    file list is in memory): the training transform when ``augment``, else the
    evaluation transform (``bnn_export.imagefolder``)."""

    def __init__(
        self,
        split: imagefolder.Split,
        *,
        input_shape: tuple[int, int, int],
        augment: bool,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        self.split = split
        c, h, w = (int(v) for v in input_shape)
        self.input_shape = (c, h, w)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index = range(len(self))[index]  # a plain int in range (IndexError otherwise)
        img = imagefolder.open_rgb(self.split.path(index))
        size = self.input_shape[1:]
        if self.augment:
            x = imagefolder.train_transform(img, size, self.rng(index))
        else:
            x = imagefolder.eval_transform(img, size)
        return torch.from_numpy(x), int(self.split.labels[index])


def _imagefolder_data(
    spec: str, input_shape: tuple[int, int, int] | None, *, augment: bool, seed: int
) -> TrainingData:
    root = imagefolder.parse_spec(spec)
    shape = imagefolder.check_shape(input_shape)
    tree = imagefolder.scan(root)
    return TrainingData(
        spec=spec,
        train=ImageFolderDataset(tree.train, input_shape=shape, augment=augment, seed=seed),
        test=ImageFolderDataset(tree.val, input_shape=shape, augment=False),
        num_classes=len(tree.classes),
        input_shape=shape,
        preprocessing=imagefolder.preprocessing(tree.classes, augment=augment),
    )


class CropFlip:
    """:func:`crop_flip` with fixed padding and fill (a picklable callable, so datasets
    holding it go to DataLoader workers under any start method, spawn included)."""

    def __init__(self, padding: int, fill: np.ndarray) -> None:
        self.padding = padding
        self.fill = fill

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return crop_flip(image, rng, self.padding, self.fill)


def _cifar_augment() -> CropFlip:
    """CIFAR-10's crop + flip, padding with black (raw 0) as normalised values."""
    fill = normalize_mean_std(np.zeros((len(CIFAR10_MEAN),)), CIFAR10_MEAN, CIFAR10_STD, 0)
    return CropFlip(CIFAR10_PADDING, fill)


def training_data(
    spec: str,
    input_shape: tuple[int, int, int] | None = None,
    *,
    augment: bool = True,
    seed: int = 0,
) -> TrainingData:
    """The training and test datasets for ``spec``, at ``input_shape`` (C, H, W; None: the
    dataset's own). ``augment`` turns on the dataset's standard training augmentation
    (CIFAR-10: crop + flip; digits and MNIST have none); ``seed`` seeds it."""
    name = spec.partition(":")[0]
    if name == "imagefolder":
        return _imagefolder_data(spec, input_shape, augment=augment, seed=seed)
    data = load_dataset(spec)
    c, h, w = (int(v) for v in (input_shape or data.input_shape))
    shape = (c, h, w)
    aug = _cifar_augment() if (augment and name == "cifar10") else None
    preprocessing = dict(data.preprocessing)
    preprocessing["augment"] = list(CIFAR10_AUGMENT) if aug is not None else []
    return TrainingData(
        spec=data.spec,
        train=ArrayDataset(data.x_train, data.y_train, input_shape=shape, augment=aug, seed=seed),
        test=ArrayDataset(data.x_test, data.y_test, input_shape=shape),
        num_classes=data.num_classes,
        input_shape=shape,
        preprocessing=preprocessing,
    )


def stack(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """All of a (small) dataset's samples as numpy arrays (x float32 NCHW, y int64)."""
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(list(xs)).numpy(), np.asarray(ys, dtype=np.int64)
