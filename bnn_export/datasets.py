"""Datasets: the embedded digits set, and CIFAR-10 / MNIST read from local files.

A dataset spec is ``digits``, ``cifar10:DIR``, ``mnist:DIR`` or ``imagefolder:DIR``
(``bnn_export.imagefolder``; here a limited, deterministic subset). Nothing is ever
downloaded. Images come out as float32 NCHW. ``digits`` and ``mnist`` are scaled to
[-1, 1] (``x / max * 2 - 1``); ``cifar10`` is normalised per channel with the usual
CIFAR-10 mean/std (``(x / 255 - mean) / std``, :data:`CIFAR10_MEAN`, :data:`CIFAR10_STD`).
Each :class:`Dataset` carries a JSON-able ``preprocessing`` record saying which, so a
checkpoint can record what its model was trained on and conversion can check it.
``adapt`` resizes/pads images to a model's input. Training-time augmentation lives in
``bnn_export.data_torch``.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnn_export.errors import BnnExportError, unknown_name

DATASETS = {
    "digits": "scikit-learn's 8x8 handwritten digits (1,797 images, embedded)",
    "cifar10": "CIFAR-10 python pickle batches: cifar10:DIR",
    "mnist": "MNIST IDX files (gz or not): mnist:DIR",
    "imagefolder": "ImageNet-layout tree DIR/train/CLASS/*.jpg|png, DIR/val/CLASS/...: "
    "imagefolder:DIR",
}

#: The train/test split of ``digits`` is fixed (not the training seed), so every
#: run and every runtime is scored on the same 360 test images.
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2

#: The well-known CIFAR-10 per-channel mean and standard deviation of the 50,000 training
#: images after ``x / 255`` (constants, not recomputed from the files given, so every
#: copy of CIFAR-10 and every subset gets the same preprocessing).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

#: Version of the ``preprocessing`` record layout.
PREPROCESSING_FORMAT = 1


def unit_range_preprocessing() -> dict[str, Any]:
    """The record for images scaled ``x / max * 2 - 1`` to [-1, 1] (``max``: the largest
    pixel value the format has: 16 for digits, 255 for 8-bit images)."""
    return {"format": PREPROCESSING_FORMAT, "input": {"scale": "x/max*2-1"}}


def mean_std_preprocessing(
    mean: tuple[float, ...], std: tuple[float, ...], **extra: Any
) -> dict[str, Any]:
    """The record for images normalised ``(x / 255 - mean) / std`` per channel."""
    return {
        "format": PREPROCESSING_FORMAT,
        "input": {"scale": "x/255", "mean": list(mean), "std": list(std), **extra},
    }


def legacy_preprocessing() -> dict[str, Any]:
    """What a checkpoint that records no preprocessing was trained on: images scaled to
    [-1, 1], as bnn-export did for every dataset before it recorded preprocessing."""
    return unit_range_preprocessing()


def preprocessing_mismatch(trained: dict[str, Any], loaded: dict[str, Any]) -> str | None:
    """None when ``loaded`` images are preprocessed the way ``trained`` records (the
    ``input`` part; augmentation is training-only), otherwise a sentence saying how."""
    a, b = trained.get("input"), loaded.get("input")
    if a == b:
        return None
    return f"the model was trained on inputs preprocessed as {a}, the dataset gives {b}"


def normalize_mean_std(
    x: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...], channel_axis: int = 1
) -> np.ndarray:
    """``(x / 255 - mean) / std`` in float32, per channel along ``channel_axis``.

    Element-wise only, so one image and a batch holding it give identical values."""
    shape = [1] * x.ndim
    shape[channel_axis] = len(mean)
    m = np.asarray(mean, dtype=np.float32).reshape(shape)
    s = np.asarray(std, dtype=np.float32).reshape(shape)
    return ((x.astype(np.float32) / np.float32(255.0)) - m) / s


@dataclass(frozen=True)
class Dataset:
    spec: str
    x_train: np.ndarray  # float32 [N, C, H, W] in [-1, 1]
    y_train: np.ndarray  # int64 [N]
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    #: JSON-able record of how raw pixels became ``x_*`` (see the module docstring)
    preprocessing: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    def adapted(self, input_shape: tuple[int, int, int]) -> Dataset:
        """This dataset with images resized/padded to ``input_shape`` (C, H, W)."""
        if tuple(input_shape) == self.input_shape:
            return self
        return Dataset(
            spec=self.spec,
            x_train=adapt(self.x_train, input_shape),
            y_train=self.y_train,
            x_test=adapt(self.x_test, input_shape),
            y_test=self.y_test,
            num_classes=self.num_classes,
            preprocessing=self.preprocessing,
        )


def adapt(x: np.ndarray, input_shape: tuple[int, int, int]) -> np.ndarray:
    """Resize NCHW images to (C, H, W): channel repeat/mean, integer nearest upsampling,
    then centre padding with the background value -1 or centre cropping."""
    c, h, w = input_shape
    if x.shape[1] != c:
        if x.shape[1] == 1:
            x = np.repeat(x, c, axis=1)
        elif c == 1:
            x = x.mean(axis=1, keepdims=True)
        else:
            raise BnnExportError(
                f"cannot adapt {x.shape[1]}-channel images to {c} channels",
                hint="pick a model whose input channels match the dataset",
            )
    factor = max(1, min(h // x.shape[2], w // x.shape[3]))
    if factor > 1:
        x = x.repeat(factor, axis=2).repeat(factor, axis=3)
    out = np.full((x.shape[0], c, h, w), -1.0, dtype=np.float32)
    sh, sw = min(h, x.shape[2]), min(w, x.shape[3])
    oy, ox = (h - sh) // 2, (w - sw) // 2
    iy, ix = (x.shape[2] - sh) // 2, (x.shape[3] - sw) // 2
    out[:, :, oy : oy + sh, ox : ox + sw] = x[:, :, iy : iy + sh, ix : ix + sw]
    return out


def load_dataset(
    spec: str,
    *,
    input_shape: tuple[int, int, int] | None = None,
    max_images: int | None = None,
    with_train: bool = True,
) -> Dataset:
    """Load a dataset by spec (``digits``, ``cifar10:DIR``, ``mnist:DIR``,
    ``imagefolder:DIR``).

    ``input_shape``, ``max_images`` and ``with_train`` apply to ``imagefolder`` only,
    whose images have no size of their own: they are rendered at ``input_shape`` (default
    3x224x224), at most ``max_images`` per split are loaded (default
    ``bnn_export.imagefolder.DEFAULT_MAX_IMAGES``), and ``with_train=False`` leaves the
    train split empty (nothing decoded). The in-memory datasets load whole and are fitted
    to a model with :meth:`Dataset.adapted`.
    """
    name, _, arg = spec.partition(":")
    if name == "imagefolder":
        from bnn_export.imagefolder import load_imagefolder

        return load_imagefolder(
            spec, input_shape=input_shape, max_images=max_images, with_train=with_train
        )
    if name == "digits":
        if arg:
            raise BnnExportError(f"dataset 'digits' takes no argument, got {spec!r}")
        return _load_digits()
    if name in ("cifar10", "mnist"):
        if not arg:
            raise BnnExportError(
                f"dataset {name!r} needs a directory: {name}:DIR",
                hint=f"pass --dataset {name}:/path/to/{name}",
            )
        path = Path(arg).expanduser()
        if not path.is_dir():
            raise BnnExportError(
                f"{name} data directory {arg!r} does not exist",
                hint=f"point {name}:DIR at a folder holding the standard {name} files",
            )
        return _load_cifar10(path, spec) if name == "cifar10" else _load_mnist(path, spec)
    raise unknown_name("dataset", name, DATASETS)


def _to_unit_range(x: np.ndarray, maximum: float) -> np.ndarray:
    return (x.astype(np.float32) / np.float32(maximum)) * 2.0 - 1.0


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = _to_unit_range(bunch.images, 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    test_idx: list[int] = []
    for label in range(10):  # stratified: the same share of every class in the test split
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        test_idx.extend(idx[: round(len(idx) * DIGITS_TEST_FRACTION)].tolist())
    test = np.zeros(len(y), dtype=bool)
    test[test_idx] = True
    return Dataset(
        "digits",
        x[~test],
        y[~test],
        x[test],
        y[test],
        num_classes=10,
        preprocessing=unit_range_preprocessing(),
    )


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that revives only what CIFAR-10 batches contain (no code execution)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes pickled by Python 3 at protocol 2
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise ValueError(f"data shape {data.shape}, {len(labels)} labels")
    except (
        pickle.UnpicklingError,
        EOFError,
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
    ) as exc:
        raise BnnExportError(
            f"malformed CIFAR-10 batch {str(path)!r}: {exc}",
            hint="use the python version of CIFAR-10 (cifar-10-batches-py)",
        ) from None
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar10(root: Path, spec: str) -> Dataset:
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    train_files = sorted(root.glob("data_batch_[0-9]*"))
    test_file = root / "test_batch"
    if not train_files or not test_file.is_file():
        raise BnnExportError(
            f"no CIFAR-10 batches in {str(root)!r} (need data_batch_1..5 and test_batch)",
            hint="extract cifar-10-python.tar.gz and point cifar10:DIR at it",
        )
    parts = [_read_cifar_batch(p) for p in train_files]
    x_test, y_test = _read_cifar_batch(test_file)
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    return Dataset(
        spec,
        normalize_mean_std(x_train, CIFAR10_MEAN, CIFAR10_STD),
        y_train,
        normalize_mean_std(x_test, CIFAR10_MEAN, CIFAR10_STD),
        y_test,
        num_classes=10,
        preprocessing=mean_std_preprocessing(CIFAR10_MEAN, CIFAR10_STD),
    )


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("bad magic number (expected unsigned-byte IDX)")
        dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
        count = int(np.prod(dims))
        body = np.frombuffer(raw, dtype=np.uint8, count=count, offset=4 + 4 * ndim)
    except (OSError, EOFError, struct.error, ValueError) as exc:
        raise BnnExportError(
            f"malformed MNIST IDX file {str(path)!r}: {exc}",
            hint="use the original MNIST IDX files (optionally .gz)",
        ) from None
    return body.reshape(dims)


def _find_idx(root: Path, stem: str) -> Path:
    for pattern in (
        f"{stem}-idx*-ubyte",
        f"{stem}.idx*-ubyte",
        f"{stem}-idx*-ubyte.gz",
        f"{stem}.idx*-ubyte.gz",
    ):
        hits = sorted(root.glob(pattern))
        if hits:
            return hits[0]
    raise BnnExportError(
        f"no MNIST file {stem}-idx*-ubyte[.gz] in {str(root)!r}",
        hint="point mnist:DIR at the folder with the four MNIST IDX files",
    )


def _load_mnist(root: Path, spec: str) -> Dataset:
    x_train = _read_idx(_find_idx(root, "train-images"))
    y_train = _read_idx(_find_idx(root, "train-labels"))
    x_test = _read_idx(_find_idx(root, "t10k-images"))
    y_test = _read_idx(_find_idx(root, "t10k-labels"))
    for x, y, which in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise BnnExportError(
                f"MNIST {which} files disagree: images {x.shape}, labels {y.shape}",
                hint="use matching image and label files",
            )
    return Dataset(
        spec,
        _to_unit_range(x_train, 255.0)[:, None],
        y_train.astype(np.int64),
        _to_unit_range(x_test, 255.0)[:, None],
        y_test.astype(np.int64),
        num_classes=10,
        preprocessing=unit_range_preprocessing(),
    )
