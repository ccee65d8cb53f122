from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from bnn_export.datasets import adapt, load_dataset
from bnn_export.errors import BnnExportError


def test_digits_split_is_fixed_stratified_and_scaled() -> None:
    a, b = load_dataset("digits"), load_dataset("digits")
    assert len(a.x_train) + len(a.x_test) == 1797 and a.x_test.shape[1:] == (1, 8, 8)
    assert 355 <= len(a.x_test) <= 362
    np.testing.assert_array_equal(a.y_test, b.y_test)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert a.x_train.dtype == np.float32
    assert a.x_train.min() == -1.0 and a.x_train.max() == 1.0
    counts = np.bincount(a.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 20% of each class (174..183 images)


def test_adapt_upsamples_repeats_channels_and_pads() -> None:
    x = np.arange(2 * 1 * 8 * 8, dtype=np.float32).reshape(2, 1, 8, 8)
    y = adapt(x, (3, 32, 32))
    assert y.shape == (2, 3, 32, 32)
    assert y[0, 2, 5, 7] == x[0, 0, 1, 1]  # nearest x4 upsampling
    z = adapt(np.zeros((1, 1, 28, 28), np.float32), (1, 32, 32))
    assert z[0, 0, 0, 0] == -1.0 and z[0, 0, 2, 2] == 0.0  # centre padded by 2 with background


def test_cifar10_fixture_loads(cifar_dir: Path) -> None:
    data = load_dataset(f"cifar10:{cifar_dir.parent}")
    assert data.x_train.shape == (24, 3, 32, 32) and data.x_test.shape == (12, 3, 32, 32)
    raw = pickle.loads((cifar_dir / "test_batch").read_bytes(), encoding="bytes")
    # per-channel normalisation with the well-known CIFAR-10 mean/std, recorded
    mean = np.array([0.4914, 0.4822, 0.4465]).reshape(3, 1, 1)
    std = np.array([0.2470, 0.2435, 0.2616]).reshape(3, 1, 1)
    expect = (raw[b"data"][0].reshape(3, 32, 32) / 255 - mean) / std
    np.testing.assert_allclose(data.x_test[0], expect, atol=1e-5)
    assert data.x_test.dtype == np.float32
    assert list(data.y_test) == raw[b"labels"]
    assert data.preprocessing["input"] == {
        "scale": "x/255",
        "mean": [0.4914, 0.4822, 0.4465],
        "std": [0.2470, 0.2435, 0.2616],
    }
    assert data.adapted((3, 64, 64)).preprocessing == data.preprocessing


def test_digits_and_mnist_keep_the_unit_range_record() -> None:
    assert load_dataset("digits").preprocessing == {
        "format": 1,
        "input": {"scale": "x/max*2-1"},
    }


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch /tmp/bnn-export-pwned",))


def test_cifar10_pickle_with_code_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(BnnExportError, match="malformed CIFAR-10 batch"):
        load_dataset(f"cifar10:{tmp_path}")
    assert not Path("/tmp/bnn-export-pwned").exists()


def _write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    raw = (
        struct.pack(">HBB", 0, 8, arr.ndim)
        + struct.pack(f">{arr.ndim}I", *arr.shape)
        + arr.tobytes()
    )
    path.write_bytes(gzip.compress(raw) if gz else raw)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_files_load(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(1)
    ext = ".gz" if gz else ""
    xtr = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / f"train-images-idx3-ubyte{ext}", xtr, gz)
    _write_idx(
        tmp_path / f"train-labels-idx1-ubyte{ext}", rng.integers(0, 10, 20, dtype=np.uint8), gz
    )
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{ext}", xtr[:5], gz)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{ext}", np.arange(5, dtype=np.uint8), gz)
    data = load_dataset(f"mnist:{tmp_path}")
    assert data.x_train.shape == (20, 1, 28, 28)
    np.testing.assert_allclose(data.x_test[3, 0], xtr[3] / 255 * 2 - 1, atol=1e-6)
    assert list(data.y_test) == [0, 1, 2, 3, 4]
    assert data.preprocessing["input"] == {"scale": "x/max*2-1"}


def test_malformed_mnist_file_is_a_clear_error(tmp_path: Path) -> None:
    for stem in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (tmp_path / stem).write_bytes(b"\x01\x02garbage")
    with pytest.raises(BnnExportError, match="malformed MNIST IDX file"):
        load_dataset(f"mnist:{tmp_path}")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("imagenet", "unknown dataset 'imagenet'; valid: cifar10, digits, imagefolder, mnist"),
        ("cifar10", "needs a directory"),
        ("cifar10:/nonexistent/dir", "does not exist"),
        ("mnist:/nonexistent/dir", "does not exist"),
    ],
)
def test_bad_dataset_specs(spec: str, message: str) -> None:
    with pytest.raises(BnnExportError, match=message):
        load_dataset(spec)


def test_empty_cifar_dir_names_the_files(tmp_path: Path) -> None:
    with pytest.raises(BnnExportError, match="data_batch_1..5 and test_batch"):
        load_dataset(f"cifar10:{tmp_path}")
