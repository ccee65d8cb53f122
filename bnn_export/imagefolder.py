"""``imagefolder:DIR``: an ImageNet-layout image tree, read with PIL (numpy only, no torch).

Layout: ``DIR/train/CLASS/*.jpg|jpeg|png`` and ``DIR/val/CLASS/...``. The class index of
an image is the position of its folder name in the sorted list of class folders; ``train``
and ``val`` must hold the same class folders, none of them empty. Files with other
extensions and hidden files (``.name``) are ignored. Only the file list is kept in memory
(one numpy byte-string array, no per-file Python objects); images are decoded when used.

Transforms (both end in ``(x / 255 - mean) / std`` with the ImageNet mean/std, channels
first, float32):

* evaluation: resize (bilinear) so the shorter side is ``round(S * 256 / 224)`` with ``S``
  the smaller of the target height/width (enlarged further if the crop would not fit),
  then the centred ``H x W`` crop;
* training (augmented): a random-resized crop (area 8%-100% of the image, aspect ratio
  3/4-4/3, 10 tries then the centre crop) resized bilinearly to ``H x W``, then a horizontal
  flip with probability 0.5, every draw from the Generator given.

An image that cannot be decoded is an error naming the file (no silent skipping).

``load_imagefolder`` gives the numpy :class:`~bnn_export.datasets.Dataset` that convert
and bench validate on: at most ``max_images`` (default :data:`DEFAULT_MAX_IMAGES`) val
images as the test split and as many train images as the train split (for batch-norm
re-estimation), both with the evaluation transform, picked evenly spread over the sorted
file lists (deterministic); ``with_train=False`` skips the train images. ``bnn_export.data_torch`` streams the whole tree for training.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnn_export.datasets import PREPROCESSING_FORMAT, Dataset, normalize_mean_std
from bnn_export.errors import BnnExportError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
#: Input size when none is given (C, H, W).
DEFAULT_INPUT_SHAPE = (3, 224, 224)
#: Images per split that ``load_imagefolder`` loads when no limit is given.
DEFAULT_MAX_IMAGES = 500
RESIZE_RATIO = 256 / 224
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_TRIES = 10
SPLITS = ("train", "val")


@dataclass(frozen=True)
class Split:
    """One split's file list: paths relative to ``root`` and class indices."""

    root: Path
    files: np.ndarray  # numpy bytes array of os.fsencode'd paths relative to root
    labels: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> Path:
        """The file of image ``index``."""
        return self.root / os.fsdecode(bytes(self.files[index]))


@dataclass(frozen=True)
class ImageFolder:
    """The scanned tree: class names (sorted) and the train and val file lists."""

    root: Path
    classes: list[str]
    train: Split
    val: Split


def parse_spec(spec: str) -> Path:
    """``imagefolder:DIR`` -> DIR, checked to exist."""
    _, _, arg = spec.partition(":")
    if not arg:
        raise BnnExportError(
            "dataset 'imagefolder' needs a directory: imagefolder:DIR",
            hint="pass --dataset imagefolder:/path/to/tree (holding train/CLASS/* and val/CLASS/*)",
        )
    path = Path(arg).expanduser()
    if not path.is_dir():
        raise BnnExportError(
            f"imagefolder data directory {arg!r} does not exist",
            hint="point imagefolder:DIR at a folder holding train/CLASS/* and val/CLASS/*",
        )
    return path


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(
        e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")
    )


def _images_in(class_dir: Path) -> list[str]:
    return sorted(
        e.name
        for e in os.scandir(class_dir)
        if not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file()
    )


def scan(root: Path) -> ImageFolder:
    """List ``root``'s train and val images; clear errors for a tree that does not fit
    the layout (missing split, no classes, differing class sets, empty class folder)."""
    missing = [s for s in SPLITS if not (root / s).is_dir()]
    if missing:
        raise BnnExportError(
            f"imagefolder {str(root)!r} has no {' or '.join(m + '/' for m in missing)} folder",
            hint="lay the images out as DIR/train/CLASS/*.jpg and DIR/val/CLASS/*.jpg",
        )
    per_split = {s: _class_dirs(root / s) for s in SPLITS}
    classes = per_split["train"]
    if not classes:
        raise BnnExportError(
            f"imagefolder {str(root / 'train')!r} has no class folders",
            hint="put each class's images in its own folder: train/CLASS/*.jpg",
        )
    if per_split["val"] != classes:
        only_train = sorted(set(classes) - set(per_split["val"]))
        only_val = sorted(set(per_split["val"]) - set(classes))
        raise BnnExportError(
            f"imagefolder {str(root)!r}: train/ and val/ hold different class folders "
            f"(only in train: {only_train or 'none'}; only in val: {only_val or 'none'})",
            hint="give train/ and val/ the same class folders (class index = sorted name)",
        )
    splits = {}
    for s in SPLITS:
        files: list[bytes] = []
        labels: list[int] = []
        for index, name in enumerate(classes):
            images = _images_in(root / s / name)
            if not images:
                raise BnnExportError(
                    f"imagefolder class folder {str(root / s / name)!r} holds no images "
                    f"({', '.join(IMAGE_EXTENSIONS)})",
                    hint="add images to it or remove the folder from both train/ and val/",
                )
            files.extend(os.fsencode(f"{name}/{image}") for image in images)
            labels.extend([index] * len(images))
        splits[s] = Split(root / s, np.array(files), np.array(labels, dtype=np.int64))
    return ImageFolder(root, classes, splits["train"], splits["val"])


def preprocessing(classes: list[str], *, augment: bool) -> dict[str, Any]:
    """The JSON-able record of this module's transforms (``augment``: training's)."""
    return {
        "format": PREPROCESSING_FORMAT,
        "input": {
            "scale": "x/255",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "resize": "shorter side to round(S*256/224), bilinear",
            "crop": "centre",
        },
        "augment": (
            [
                {
                    "op": "random_resized_crop",
                    "scale": list(CROP_SCALE),
                    "ratio": list(CROP_RATIO),
                    "interpolation": "bilinear",
                },
                {"op": "horizontal_flip", "p": 0.5},
            ]
            if augment
            else []
        ),
        "classes": list(classes),
    }


def check_shape(input_shape: tuple[int, int, int] | None) -> tuple[int, int, int]:
    """The (C, H, W) to render at; images are RGB, so C must be 3."""
    c, h, w = (int(v) for v in (input_shape or DEFAULT_INPUT_SHAPE))
    if c != 3 or h < 1 or w < 1:
        raise BnnExportError(
            f"imagefolder images are RGB; a model input of {(c, h, w)} (C, H, W) cannot take them",
            hint="pick a model with 3 input channels",
        )
    return c, h, w


def open_rgb(path: Path) -> Any:
    """The decoded image at ``path`` as a PIL RGB image; an error naming the file if it
    cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BnnExportError(
            f"cannot read image {str(path)!r}: {exc}",
            hint="replace or delete the file (it is corrupt, truncated or not an image)",
        ) from None


def _to_array(img: Any) -> np.ndarray:
    x = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(
        normalize_mean_std(x, IMAGENET_MEAN, IMAGENET_STD, channel_axis=2).transpose(2, 0, 1)
    )


def eval_transform(img: Any, size: tuple[int, int]) -> np.ndarray:
    """Resize (shorter side to round(S*256/224)) + centre crop to ``size`` (H, W), normalised."""
    from PIL import Image

    h, w = size
    short = round(min(h, w) * RESIZE_RATIO)
    iw, ih = img.size
    scale = max(short / min(iw, ih), h / ih, w / iw)
    nw, nh = max(w, round(iw * scale)), max(h, round(ih * scale))
    top, left = (nh - h) // 2, (nw - w) // 2
    resized = img.resize((nw, nh), Image.Resampling.BILINEAR)
    return _to_array(resized.crop((left, top, left + w, top + h)))


def crop_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """The random-resized-crop box (left, top, right, bottom) in a ``width`` x ``height``
    image: up to 10 draws of (area fraction, log aspect ratio, position), then the centre
    crop at the nearest allowed aspect ratio."""
    area = width * height
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(CROP_TRIES):
        target = area * rng.uniform(*CROP_SCALE)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw = round(math.sqrt(target * aspect))
        ch = round(math.sqrt(target / aspect))
        if 0 < cw <= width and 0 < ch <= height:
            top = int(rng.integers(0, height - ch + 1))
            left = int(rng.integers(0, width - cw + 1))
            return left, top, left + cw, top + ch
    ratio = width / height
    if ratio < CROP_RATIO[0]:
        cw, ch = width, round(width / CROP_RATIO[0])
    elif ratio > CROP_RATIO[1]:
        cw, ch = round(height * CROP_RATIO[1]), height
    else:
        cw, ch = width, height
    top, left = (height - ch) // 2, (width - cw) // 2
    return left, top, left + cw, top + ch


def train_transform(img: Any, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Random-resized crop to ``size`` (H, W) + horizontal flip (p=0.5), normalised."""
    from PIL import Image

    h, w = size
    iw, ih = img.size
    box = crop_box(iw, ih, rng)
    flip = bool(rng.random() < 0.5)
    out = img.resize((w, h), Image.Resampling.BILINEAR, box=box)
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _to_array(out)


def spread(n: int, k: int | None) -> np.ndarray:
    """``min(n, k)`` indices out of ``n``, evenly spread (all of them when k is None or
    >= n): ``floor(i * n / k)``, a deterministic choice that covers every class."""
    if k is None or k >= n:
        return np.arange(n)
    if k <= 0:
        return np.arange(0)
    return (np.arange(k) * n) // k


def load_split(
    split: Split, indices: np.ndarray, size: tuple[int, int], *, desc: str
) -> np.ndarray:
    """The images ``indices`` of ``split`` with the evaluation transform, as float32 NCHW."""
    from tqdm import tqdm

    out = np.empty((len(indices), 3, *size), dtype=np.float32)
    for row, i in enumerate(tqdm(indices, desc=desc, unit="img", leave=False, disable=None)):
        out[row] = eval_transform(open_rgb(split.path(int(i))), size)
    return out


def load_imagefolder(
    spec: str,
    *,
    input_shape: tuple[int, int, int] | None = None,
    max_images: int | None = None,
    with_train: bool = True,
) -> Dataset:
    """The numpy dataset for ``imagefolder:DIR``: at most ``max_images`` (default
    :data:`DEFAULT_MAX_IMAGES`) val images as the test split and as many train images as
    the train split (none without ``with_train``), evaluation transform at
    ``input_shape`` (default 3x224x224)."""
    root = parse_spec(spec)
    _, h, w = check_shape(input_shape)
    if max_images is not None and max_images < 1:
        raise BnnExportError(f"max_images must be >= 1, got {max_images}")
    limit = DEFAULT_MAX_IMAGES if max_images is None else max_images
    tree = scan(root)
    val_idx = spread(len(tree.val), limit)
    train_idx = spread(len(tree.train), limit if with_train else 0)
    x_test = load_split(tree.val, val_idx, (h, w), desc="val images")
    x_train = load_split(tree.train, train_idx, (h, w), desc="train images")
    record = preprocessing(tree.classes, augment=False)
    del record["augment"]
    return Dataset(
        spec,
        x_train,
        tree.train.labels[train_idx],
        x_test,
        tree.val.labels[val_idx],
        num_classes=len(tree.classes),
        preprocessing=record,
    )
