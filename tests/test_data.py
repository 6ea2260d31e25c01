"""Data sets in every supported format, written by the tests themselves, and the errors bad data gets."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch

from tests.conftest import make_image_folder
from vitlab.data import ImageTransform, load_data
from vitlab.data.transforms import match_channels, random_affine
from vitlab.errors import DataError


def test_digits_split_is_fixed_and_stratified():
    a, b = load_data("digits"), load_data("digits")
    assert len(a.train) == 1437 and len(a.test) == 360 and a.classes == [str(i) for i in range(10)]
    assert torch.equal(a.test.labels, b.test.labels)
    counts = np.bincount(a.test.targets)
    assert counts.min() >= 35  # every digit is in the test split in proportion (~36 each)
    img, label = a.train[0]
    assert img.dtype == torch.uint8 and img.shape == (1, 8, 8) and img.max() <= 255


def test_image_folder_random_split(image_folder):
    s = load_data(str(image_folder))
    assert s.classes == ["cat", "dog"] and len(s.train) + len(s.test) == 12 and s.natural_images
    img, _ = s.train[0]
    assert img.shape == (3, 12, 12)


def test_image_folder_train_val_layout(tmp_path):
    make_image_folder(tmp_path / "train", per_class=3)
    make_image_folder(tmp_path / "val", per_class=2)
    s = load_data(str(tmp_path))
    assert len(s.train) == 6 and len(s.test) == 4


def test_corrupt_image_is_named(image_folder):
    bad = image_folder / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match="broken.png"):
        load_data(str(image_folder))


def test_missing_and_empty_directories(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        load_data(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-directories"):
        load_data(str(tmp_path / "empty"))
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_data(str(tmp_path / "noimg"))


def _write_cifar10(root, n=20):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"class{i}" for i in range(10)]
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f)
    return names


def test_cifar10_batches(tmp_path):
    names = _write_cifar10(tmp_path)
    s = load_data(f"cifar10:{tmp_path}")
    assert s.classes == names and len(s.train) == 100 and len(s.test) == 20
    assert s.train[0][0].shape == (3, 32, 32)


def test_cifar100_batches(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    with open(d / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    for name, n in (("train", 30), ("test", 10)):
        with open(d / name, "wb") as f:
            pickle.dump({"data": np.zeros((n, 3072), np.uint8), "fine_labels": list(range(n))}, f)
    s = load_data(f"cifar100:{tmp_path}")
    assert len(s.classes) == 100 and len(s.train) == 30 and s.test[3][1] == 3


def test_cifar_batch_with_code_is_refused(tmp_path):
    _write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": Evil(), "labels": []}, f)
    with pytest.raises(DataError, match="test_batch.*not allowed"):
        load_data(f"cifar10:{tmp_path}")


def _idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + np.array(arr.shape, dtype=">i4").tobytes() + arr.astype(np.uint8).tobytes()


def test_mnist_idx_plain_and_gzip(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx(rng.integers(0, 256, (7, 28, 28))))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(np.arange(7) % 10))
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(_idx(rng.integers(0, 256, (3, 28, 28))))
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(_idx(np.array([4, 5, 6])))
    s = load_data(f"mnist:{tmp_path}")
    assert len(s.train) == 7 and len(s.test) == 3 and s.test[1][1] == 5 and s.train[0][0].shape == (1, 28, 28)


def test_mnist_bad_header_is_named(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 12)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(np.arange(2)))
    with pytest.raises(DataError, match="train-images-idx3-ubyte is not an unsigned-byte IDX"):
        load_data(f"mnist:{tmp_path}")


def test_channel_matching():
    grey = torch.rand(1, 4, 4)
    assert torch.equal(match_channels(grey, 3), grey.expand(3, 4, 4))
    rgb = torch.zeros(3, 2, 2)
    rgb[0] = 1.0
    torch.testing.assert_close(match_channels(rgb, 1), torch.full((1, 2, 2), 0.299))
    with pytest.raises(DataError, match="4 channels but the model expects in_chans=3"):
        match_channels(torch.rand(4, 2, 2), 3)


def test_transform_resizes_and_normalises():
    tf = ImageTransform(16, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = tf(torch.full((1, 8, 12), 255, dtype=torch.uint8))  # non-square grey -> centre square -> 16x16 RGB
    assert x.shape == (3, 16, 16)
    torch.testing.assert_close(x, torch.full_like(x, 2.0))


def test_eval_crop_pct_is_timms_centre_crop():
    # timm resizes to floor(224 / 0.875) = 256, then takes the centre 224: a 256-pixel image is only cropped, so
    # the output is its exact centre.
    img = torch.randint(0, 256, (3, 256, 256), dtype=torch.uint8)
    tf = ImageTransform(224, 3, (0.0,) * 3, (1.0,) * 3, crop_pct=0.875, interpolation="bicubic")
    assert torch.equal(tf(img), img[:, 16:240, 16:240].float() / 255)
    # a wide image: centre square first, then the same crop
    wide = torch.cat([torch.zeros(3, 256, 50, dtype=torch.uint8), img, torch.zeros(3, 256, 50, dtype=torch.uint8)], 2)
    assert torch.equal(tf(wide), tf(img))
    with pytest.raises(ValueError, match="crop_pct"):
        ImageTransform(224, 3, (0.0,) * 3, (1.0,) * 3, crop_pct=1.5)


def test_transform_for_model_reads_pretrained_cfg():
    import vitlab

    tf = ImageTransform.for_model(vitlab.create_model("convnext_base", num_classes=0))
    assert (tf.crop_pct, tf.interpolation, tf.img_size) == (0.875, "bicubic", 224)
    tf = ImageTransform.for_model(vitlab.create_model("vit_micro_patch4_8"))
    assert (tf.crop_pct, tf.in_chans) == (1.0, 1)  # the small configs: images already at the model's size


def test_random_affine_identity_at_zero_strength():
    x = torch.rand(1, 8, 8)
    torch.testing.assert_close(random_affine(x, degrees=0, scale=0, shift=0), x, atol=1e-5, rtol=0)
