"""bnn_export.data_torch: training datasets, CIFAR-10 augmentation, determinism."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bnn_export.data_torch import stack, training_data
from bnn_export.datasets import CIFAR10_MEAN, CIFAR10_STD, load_dataset


def test_digits_training_data_is_the_numpy_dataset_unaugmented() -> None:
    data = load_dataset("digits")
    td = training_data("digits")
    assert td.input_shape == (1, 8, 8) and td.num_classes == 10 and td.spec == "digits"
    assert td.preprocessing == {"format": 1, "input": {"scale": "x/max*2-1"}, "augment": []}
    x, y = stack(td.test)
    np.testing.assert_array_equal(x, data.x_test)
    np.testing.assert_array_equal(y, data.y_test)
    td.train.set_epoch(3)  # type: ignore[attr-defined]
    x, y = stack(td.train)  # no augmentation for digits: any epoch gives the data itself
    np.testing.assert_array_equal(x, data.x_train)
    item, label = td.train[0]
    assert item.dtype == torch.float32 and isinstance(label, int)
    assert torch.equal(td.train[-1][0], td.train[len(td.train) - 1][0])
    with pytest.raises(IndexError):
        td.train[len(td.train)]


def test_adapted_input_shape_matches_numpy_adapt() -> None:
    td = training_data("digits", (3, 32, 32))
    x, _ = stack(td.test)
    np.testing.assert_array_equal(x, load_dataset("digits").adapted((3, 32, 32)).x_test)
    assert td.input_shape == (3, 32, 32) and td.train[5][0].shape == (3, 32, 32)


def _normalised_raw(cifar_dir: Path, name: str) -> np.ndarray:
    raw = pickle.loads((cifar_dir / name).read_bytes(), encoding="bytes")[b"data"]
    x = raw.reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255)
    mean = np.asarray(CIFAR10_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(CIFAR10_STD, np.float32).reshape(1, 3, 1, 1)
    return (x - mean) / std


def _crop_flip_of(image: np.ndarray, out: np.ndarray) -> set[tuple[int, int, bool]]:
    """Every (dy, dx, flipped) for which ``out`` is exactly that crop of ``image``
    zero-padded (black) by 4."""
    black = (-np.asarray(CIFAR10_MEAN, np.float32) / np.asarray(CIFAR10_STD, np.float32)).reshape(
        3, 1, 1
    )
    padded = np.broadcast_to(black, (3, 40, 40)).copy()
    padded[:, 4:36, 4:36] = image
    hits = set()
    for dy in range(9):
        for dx in range(9):
            crop = padded[:, dy : dy + 32, dx : dx + 32]
            for flipped in (False, True):
                if np.array_equal(crop[:, :, ::-1] if flipped else crop, out):
                    hits.add((dy, dx, flipped))
    return hits


def test_cifar_augmentation_is_crop_and_flip_exactly(cifar_dir: Path) -> None:
    td = training_data(f"cifar10:{cifar_dir}", seed=7)
    assert [a["op"] for a in td.preprocessing["augment"]] == ["random_crop", "horizontal_flip"]
    assert td.preprocessing["input"]["mean"] == list(CIFAR10_MEAN)
    raw = _normalised_raw(cifar_dir, "data_batch_1")
    seen: set[tuple[int, int, bool]] = set()
    for epoch in range(4):
        td.train.set_epoch(epoch)  # type: ignore[attr-defined]
        for i in range(len(td.train)):
            out = td.train[i][0].numpy()
            hits = _crop_flip_of(raw[i], out)
            assert hits, f"sample {i} epoch {epoch} is no crop/flip of the image"
            seen |= hits
    assert {f for _, _, f in seen} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in seen}) > 20  # offsets vary over 0..8
    # the test split is not augmented and equals the numpy loader's normalised images
    x, _ = stack(td.test)
    np.testing.assert_array_equal(x, load_dataset(f"cifar10:{cifar_dir}").x_test)
    np.testing.assert_allclose(x, _normalised_raw(cifar_dir, "test_batch"), atol=1e-6)


def test_no_augment_gives_the_plain_images(cifar_dir: Path) -> None:
    td = training_data(f"cifar10:{cifar_dir}", augment=False)
    assert td.preprocessing["augment"] == []
    td.train.set_epoch(5)  # type: ignore[attr-defined]
    x, _ = stack(td.train)
    np.testing.assert_array_equal(x, load_dataset(f"cifar10:{cifar_dir}").x_train)


def test_augmentation_depends_only_on_seed_epoch_index(cifar_dir: Path) -> None:
    spec = f"cifar10:{cifar_dir}"
    a, b, c = (training_data(spec, seed=s).train for s in (1, 1, 2))
    a.set_epoch(2)  # type: ignore[attr-defined]
    b.set_epoch(2)  # type: ignore[attr-defined]
    c.set_epoch(2)  # type: ignore[attr-defined]
    order = list(range(len(a)))[::-1]  # access order does not matter
    xa = np.stack([a[i][0].numpy() for i in range(len(a))])
    xb = np.stack([b[i][0].numpy() for i in order])[::-1]
    np.testing.assert_array_equal(xa, xb)
    assert not np.array_equal(xa, stack(c)[0])  # another seed, other crops
    a.set_epoch(3)  # type: ignore[attr-defined]
    assert not np.array_equal(xa, stack(a)[0])  # another epoch, other crops
    a.set_epoch(2)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(xa, stack(a)[0])  # back to epoch 2: the same again


@pytest.mark.parametrize("persistent", [False, True])
def test_worker_count_does_not_change_batches(cifar_dir: Path, persistent: bool) -> None:
    train = training_data(f"cifar10:{cifar_dir}", seed=3).train

    def batches(workers: int, epochs: int) -> list[np.ndarray]:
        loader = DataLoader(
            train,
            batch_size=5,
            shuffle=False,
            num_workers=workers,
            persistent_workers=persistent and workers > 0,
        )
        out = []
        for epoch in range(epochs):
            train.set_epoch(epoch)  # type: ignore[attr-defined]
            out.extend(x.numpy() for x, _ in loader)
        return out

    single, multi = batches(0, 2), batches(2, 2)
    assert len(single) == len(multi) == 10
    for s, m in zip(single, multi, strict=True):
        np.testing.assert_array_equal(s, m)
    assert not np.array_equal(single[0], single[5])  # epoch 0 and 1 differ


def test_spawned_persistent_worker_sees_set_epoch(cifar_dir: Path) -> None:
    """Under the spawn start method the dataset is pickled into the worker: the augment
    callable must pickle, and the shared epoch must still reach a persistent worker."""
    train = training_data(f"cifar10:{cifar_dir}", seed=3).train
    loader = DataLoader(
        train,
        batch_size=12,
        num_workers=1,
        multiprocessing_context="spawn",
        persistent_workers=True,
    )
    for epoch in (0, 1):
        train.set_epoch(epoch)  # type: ignore[attr-defined]
        spawned = np.concatenate([x.numpy() for x, _ in loader])
        np.testing.assert_array_equal(spawned, stack(train)[0])  # in-process, same epoch


def test_sample_streams_are_distinct_per_seed_epoch_index() -> None:
    from bnn_export.data_torch import sample_rng

    draws = {
        (s, e, i): tuple(sample_rng(s, e, i).random(2))
        for s in (0, 1, -1)
        for e in (0, 1, 2)
        for i in (0, 1, 2, 10**9)
    }
    assert len(set(draws.values())) == len(draws)  # (epoch, index) are not interchangeable
    assert tuple(sample_rng(0, 1, 2).random(2)) == draws[(0, 1, 2)]  # a pure function
