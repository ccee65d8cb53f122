"""imagefolder:DIR: scanning, transforms, numpy/torch agreement, determinism, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from bnn_export import imagefolder
from bnn_export.data_torch import stack, training_data
from bnn_export.datasets import load_dataset
from bnn_export.errors import BnnExportError

CLASSES = ["cat", "dog", "eel"]  # written in another order below: the index is the sorted one


def write_tree(root: Path, per_class: dict[str, int] | None = None, seed: int = 0) -> Path:
    """A small ImageNet-layout tree of random JPEG and PNG images of varied sizes."""
    rng = np.random.default_rng(seed)
    per_class = per_class or {"train": 8, "val": 4}
    for split, n in per_class.items():
        for name in ("eel", "cat", "dog"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = (int(v) for v in rng.integers(20, 60, size=2))
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                ext = ("jpg", "png", "JPEG")[i % 3]
                Image.fromarray(pixels).save(folder / f"{name}_{i}.{ext}")
            (folder / "notes.txt").write_text("not an image")
            (folder / ".hidden.jpg").write_bytes(b"")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "tree")


def test_scan_maps_sorted_class_folders(tree: Path) -> None:
    found = imagefolder.scan(tree)
    assert found.classes == CLASSES
    assert len(found.train) == 24 and len(found.val) == 12
    for i in range(len(found.train)):
        path = found.train.path(i)
        assert path.parent.name == CLASSES[found.train.labels[i]]
        assert path.suffix.lower() in (".jpg", ".jpeg", ".png")
    assert found.train.files.dtype.kind == "S"  # one byte-string array, no Python objects


def test_shapes_and_recorded_preprocessing(tree: Path) -> None:
    td = training_data(f"imagefolder:{tree}", (3, 32, 40))
    assert td.num_classes == 3 and td.input_shape == (3, 32, 40)
    assert len(td.train) == 24 and len(td.test) == 12
    x, y = td.train[0]
    assert x.shape == (3, 32, 40) and x.dtype == torch.float32 and y == 0
    assert td.test[11][0].shape == (3, 32, 40) and td.test[11][1] == 2
    rec = td.preprocessing
    assert rec["input"]["mean"] == [0.485, 0.456, 0.406]
    assert rec["input"]["std"] == [0.229, 0.224, 0.225]
    assert [a["op"] for a in rec["augment"]] == ["random_resized_crop", "horizontal_flip"]
    assert rec["classes"] == CLASSES
    assert training_data(f"imagefolder:{tree}", augment=False).preprocessing["augment"] == []
    assert training_data(f"imagefolder:{tree}").input_shape == (3, 224, 224)
    numpy_side = load_dataset(f"imagefolder:{tree}", input_shape=(3, 32, 32))
    assert numpy_side.preprocessing["input"] == rec["input"]


def test_numpy_and_torch_eval_images_are_identical(tree: Path) -> None:
    spec = f"imagefolder:{tree}"
    numpy_side = load_dataset(spec, input_shape=(3, 48, 32))
    x, y = stack(training_data(spec, (3, 48, 32)).test)
    assert numpy_side.x_test.shape == (12, 3, 48, 32)
    np.testing.assert_array_equal(numpy_side.x_test, x)
    np.testing.assert_array_equal(numpy_side.y_test, y)
    # the numpy train split: the evaluation transform of the train images
    no_aug = training_data(spec, (3, 48, 32), augment=False).train
    np.testing.assert_array_equal(numpy_side.x_train, stack(no_aug)[0])


def test_eval_transform_is_resize_then_centre_crop(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    raw = rng.integers(0, 256, (37, 45, 3), dtype=np.uint8)  # shorter side 37 = 32*256/224
    out = imagefolder.eval_transform(Image.fromarray(raw), (32, 32))  # no resize needed
    crop = raw[2:34, 6:38].astype(np.float32) / np.float32(255)
    mean = np.asarray(imagefolder.IMAGENET_MEAN, np.float32)
    std = np.asarray(imagefolder.IMAGENET_STD, np.float32)
    np.testing.assert_array_equal(out, ((crop - mean) / std).transpose(2, 0, 1))
    big = imagefolder.eval_transform(Image.fromarray(raw), (64, 64))  # upscaled to 73x89
    assert big.shape == (3, 64, 64)


def test_crop_box_stays_inside_with_allowed_aspect() -> None:
    for i in range(300):
        rng = np.random.default_rng(i)
        w, h = (int(v) for v in rng.integers(5, 300, size=2))
        left, top, right, bottom = imagefolder.crop_box(w, h, rng)
        assert 0 <= left < right <= w and 0 <= top < bottom <= h
        cw, ch = right - left, bottom - top
        assert cw * ch <= w * h
        if (cw, ch) != (w, h):  # a drawn crop or the clamped centre crop
            assert 0.70 <= cw / ch <= 1.40 or min(cw, ch) < 8
    # a very wide image falls back to the centre crop at aspect ratio 4/3
    left, top, right, bottom = imagefolder.crop_box(1000, 10, np.random.default_rng(0))
    assert (top, bottom) == (0, 10) and right - left == 13 and left == (1000 - 13) // 2


def test_augmentation_depends_only_on_seed_epoch_index(tree: Path) -> None:
    spec = f"imagefolder:{tree}"
    a = training_data(spec, (3, 24, 24), seed=4).train
    b = training_data(spec, (3, 24, 24), seed=4).train
    a.set_epoch(1)  # type: ignore[attr-defined]
    b.set_epoch(1)  # type: ignore[attr-defined]
    xa = stack(a)[0]
    xb = np.stack([b[i][0].numpy() for i in reversed(range(len(b)))])[::-1]
    np.testing.assert_array_equal(xa, xb)
    a.set_epoch(2)  # type: ignore[attr-defined]
    assert not np.array_equal(xa, stack(a)[0])
    c = training_data(spec, (3, 24, 24), seed=5).train
    c.set_epoch(1)  # type: ignore[attr-defined]
    assert not np.array_equal(xa, stack(c)[0])
    # the test split is never augmented
    t = training_data(spec, (3, 24, 24), seed=4).test
    t.set_epoch(3)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(stack(t)[0], load_dataset(spec, input_shape=(3, 24, 24)).x_test)


def test_worker_count_does_not_change_batches(tree: Path) -> None:
    train = training_data(f"imagefolder:{tree}", (3, 16, 16), seed=1).train

    def batches(workers: int) -> list[np.ndarray]:
        loader = DataLoader(train, batch_size=4, shuffle=False, num_workers=workers)
        out = []
        for epoch in (0, 1):
            train.set_epoch(epoch)  # type: ignore[attr-defined]
            out.extend(x.numpy() for x, _ in loader)
        return out

    single, multi = batches(0), batches(2)
    assert len(single) == len(multi) == 12
    for s, m in zip(single, multi, strict=True):
        np.testing.assert_array_equal(s, m)


def test_max_images_is_an_even_deterministic_spread(tree: Path) -> None:
    spec = f"imagefolder:{tree}"
    small = load_dataset(spec, input_shape=(3, 16, 16), max_images=6)
    assert small.x_test.shape == (6, 3, 16, 16) and len(small.x_train) == 6
    assert list(small.y_test) == [0, 0, 1, 1, 2, 2]  # every class, not the first ones
    full = load_dataset(spec, input_shape=(3, 16, 16), max_images=100)
    np.testing.assert_array_equal(small.x_test, full.x_test[[0, 2, 4, 6, 8, 10]])
    assert list(imagefolder.spread(10, 4)) == [0, 2, 5, 7]
    val_only = load_dataset(spec, input_shape=(3, 16, 16), max_images=6, with_train=False)
    assert val_only.x_train.shape == (0, 3, 16, 16) and len(val_only.y_train) == 0
    np.testing.assert_array_equal(val_only.x_test, small.x_test)


def test_corrupt_image_is_an_error_naming_the_file(tree: Path) -> None:
    bad = tree / "val" / "dog" / "dog_1.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    spec = f"imagefolder:{tree}"
    with pytest.raises(BnnExportError, match=r"cannot read image .*dog_1\.png"):
        load_dataset(spec, input_shape=(3, 16, 16))
    td = training_data(spec, (3, 16, 16))
    with pytest.raises(BnnExportError, match=r"cannot read image .*dog_1\.png"):
        stack(td.test)
    loader = DataLoader(td.test, batch_size=4, num_workers=1)
    with pytest.raises(Exception, match=r"dog_1\.png"):  # re-raised from the worker
        list(loader)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda t: __import__("shutil").rmtree(t / "val"), r"has no val/ folder"),
        (
            lambda t: [p.unlink() for p in (t / "train" / "dog").iterdir()],
            r"class folder .*train/dog' holds no images",
        ),
        (
            lambda t: (t / "val" / "cat").rename(t / "val" / "cow"),
            r"different class folders \(only in train: \['cat'\]; only in val: \['cow'\]\)",
        ),
    ],
)
def test_malformed_trees_are_clear_errors(tree: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    damage(tree)
    with pytest.raises(BnnExportError, match=message):
        training_data(f"imagefolder:{tree}", (3, 16, 16))
    with pytest.raises(BnnExportError, match=message):
        load_dataset(f"imagefolder:{tree}", input_shape=(3, 16, 16))


@pytest.mark.parametrize(
    "spec, shape, message",
    [
        ("imagefolder", None, "needs a directory"),
        ("imagefolder:/no/such/dir", None, "does not exist"),
        ("imagefolder:{tree}", (1, 16, 16), r"images are RGB"),
    ],
)
def test_bad_specs(tree: Path, spec: str, shape: tuple[int, int, int] | None, message: str) -> None:
    spec = spec.format(tree=tree)
    with pytest.raises(BnnExportError, match=message):
        load_dataset(spec, input_shape=shape)
    with pytest.raises(BnnExportError, match=message):
        training_data(spec, shape)


# -- conversion validates on the same preprocessing ------------------------------------


def _checkpoint(tmp_path: Path, dataset: str, preprocessing: dict | None) -> Path:  # type: ignore[type-arg]
    from bnn_export.binarizers import get as get_binarizer
    from bnn_export.checkpoint import Checkpoint, save_checkpoint
    from bnn_export.models import arch_spec
    from bnn_export.models.torch_build import build_torch_model, torch_state

    arch = arch_spec("resnet20", num_classes=3, input_shape=(3, 32, 32))
    binarizer = get_binarizer("ste")
    model = build_torch_model(arch, binarizer, seed=0)
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(
        path, Checkpoint("torch", arch, binarizer, dataset, torch_state(model), {}, preprocessing)
    )
    return path


def test_convert_validates_on_the_imagefolder_val_split(
    tree: Path, cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bnn_export.convert_cli import run_convert

    spec = f"imagefolder:{tree}"
    record = training_data(spec, (3, 32, 32)).preprocessing
    ckpt = _checkpoint(tmp_path, spec, record)
    out = run_convert(str(ckpt), fmt="onnx", output=str(tmp_path / "m.onnx"))
    assert out["validation"]["ok"] and out["validation"]["samples"] == 12  # the val split
    import json

    import onnx

    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(meta["preprocessing"]) == record  # the export records it too
    # the same model validated on digits (scaled to [-1, 1], not ImageNet-normalised)
    with pytest.raises(BnnExportError, match="preprocessed as"):
        run_convert(str(ckpt), fmt="onnx", output=str(tmp_path / "d.onnx"), dataset="digits")
    assert not (tmp_path / "d.onnx").exists()
    # bench scores the export on the val split it records, --max-eval images of it
    from bnn_export.cli import main

    fast = ["--num-runs", "1", "--warmup-runs", "0", "--min-secs", "0", "--quiet"]
    capsys.readouterr()
    report = tmp_path / "bench.json"
    code = main(
        ["bench", str(tmp_path / "m.onnx"), "--max-eval", "6", "--json", str(report), *fast]
    )
    assert code == 0, capsys.readouterr().err
    row = json.loads(report.read_text())["results"][0]
    assert row["accuracy"]["samples"] == 6
    assert row["model"]["preprocessing"] == record
    cifar = f"cifar10:{cifar_dir}"  # 3x32x32 too, but CIFAR-normalised
    code = main(["bench", str(tmp_path / "m.onnx"), "--dataset", cifar, *fast])
    assert code != 0 and "preprocessed as" in capsys.readouterr().err


def test_convert_warns_for_a_legacy_checkpoint_on_normalised_cifar(
    cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bnn_export.convert_cli import run_convert

    ckpt = _checkpoint(tmp_path, f"cifar10:{cifar_dir}", None)  # records no preprocessing
    run_convert(str(ckpt), fmt="onnx", output=str(tmp_path / "m.onnx"))
    assert "records no preprocessing" in capsys.readouterr().err
