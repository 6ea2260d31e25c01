"""Data sets as uint8 images (C, H, W) with integer labels: digits, ImageFolder, CIFAR pickles, MNIST IDX.

Every loader is careful with bad input: an error names the file and says what was expected.
"""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from vitlab.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class ArrayDataset(Dataset):
    """Images held in memory: uint8 (N, C, H, W) and int64 labels (N,)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.classes = images, labels.long(), classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    def subset(self, idx: np.ndarray) -> ArrayDataset:
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        return ArrayDataset(self.images[idx_t], self.labels[idx_t], self.classes)

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()


class ImageFolder(Dataset):
    """root/CLASS_NAME/*.png|jpg|... ; classes sorted by name, as in torchvision's ImageFolder."""

    def __init__(self, root: str | Path, samples: list[tuple[Path, int]] | None = None, classes=None) -> None:
        self.root = Path(root)
        if samples is not None:
            self.samples, self.classes = samples, classes
            return
        if not self.root.is_dir():
            raise DataError(f"data directory {self.root} does not exist")
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise DataError(f"data directory {self.root} has no class sub-directories (expected ROOT/CLASS/IMAGE)")
        self.samples = []
        for label, name in enumerate(self.classes):
            files = sorted(
                p for p in (self.root / name).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            self.samples += [(p, label) for p in files]
        if not self.samples:
            raise DataError(f"data directory {self.root} has class folders but no images ({', '.join(IMAGE_SUFFIXES)})")
        for path, _ in self.samples:  # find a corrupt file now, not at epoch 7
            check_image(path)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return read_image(path), label

    def subset(self, idx: np.ndarray) -> ImageFolder:
        return ImageFolder(self.root, [self.samples[i] for i in idx], self.classes)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]


def check_image(path: Path) -> None:
    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def read_image(path: str | Path) -> torch.Tensor:
    """uint8 (C, H, W) with C = 1 (grey) or 3 (RGB): palette, alpha and 16-bit images are converted."""
    try:
        with Image.open(path) as im:
            im = im.convert("L") if im.mode in ("1", "L", "I;16", "I") else im.convert("RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None
    t = torch.from_numpy(arr.copy())
    return t[None] if t.ndim == 2 else t.permute(2, 0, 1)  # (C, H, W)


def stratified_split(targets: list[int], test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (train, test) with each class split in the same proportion."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(targets))
    counts = np.bincount(targets)
    stratify = targets if counts[counts > 0].min() >= 2 else None
    train, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=stratify)
    return np.sort(train), np.sort(test)


# ----- built-in and file-format data sets --------------------------------------------------------------------------
def load_digits_dataset() -> ArrayDataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, grey levels 0..16), no download."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(np.round(d.images * (255.0 / 16.0)).astype(np.uint8))[:, None]  # (N, 1, 8, 8)
    return ArrayDataset(images, torch.from_numpy(d.target), [str(i) for i in range(10)])


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR's python batches hold dicts of numpy arrays: allow exactly what that needs, nothing that runs code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data batch")


def _load_batch(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"CIFAR batch {path} is missing")
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise DataError(f"cannot read CIFAR batch {path}: {e}") from None


def _cifar_root(root: Path, folder: str) -> Path:
    if (root / folder).is_dir():
        return root / folder
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist")
    return root


def load_cifar(root: str | Path, which: int) -> tuple[ArrayDataset, ArrayDataset]:
    """CIFAR-10/100 python batches (`cifar-10-batches-py/`, `cifar-100-python/`), as Krizhevsky distributes them."""
    root = Path(root)
    if which == 10:
        base = _cifar_root(root, "cifar-10-batches-py")
        train_files, test_files = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]
        label_key, meta_file, names_key = "labels", "batches.meta", "label_names"
    else:
        base = _cifar_root(root, "cifar-100-python")
        train_files, test_files = ["train"], ["test"]
        label_key, meta_file, names_key = "fine_labels", "meta", "fine_label_names"
    classes = [str(c) for c in _load_batch(base / meta_file)[names_key]]

    def read(files: list[str]) -> ArrayDataset:
        xs, ys = [], []
        for name in files:
            batch = _load_batch(base / name)
            if "data" not in batch or label_key not in batch:
                raise DataError(f"CIFAR batch {base / name} lacks 'data' or {label_key!r}")
            xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[label_key], dtype=np.int64))
        return ArrayDataset(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)), classes)

    return read(train_files), read(test_files)


def _read_idx(path: Path) -> np.ndarray:
    """IDX files (LeCun's MNIST format): magic 0x0000 + dtype 0x08 + ndim, big-endian sizes, then data."""
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            break
    else:
        raise DataError(f"MNIST file {path} (or {path.name}.gz) is missing")
    opener = gzip.open if candidate.suffix == ".gz" else open
    with opener(candidate, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{candidate} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{candidate}: header says {tuple(dims)} = {int(np.prod(dims))} values, file has {data.size}")
    return data.reshape(tuple(int(d) for d in dims))


def load_mnist(root: str | Path) -> tuple[ArrayDataset, ArrayDataset]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist")
    classes = [str(i) for i in range(10)]

    def read(prefix: str) -> ArrayDataset:
        x = _read_idx(root / f"{prefix}-images-idx3-ubyte")
        y = _read_idx(root / f"{prefix}-labels-idx1-ubyte")
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{root}: {prefix} images {x.shape} and labels {y.shape} do not match")
        return ArrayDataset(torch.from_numpy(x.copy())[:, None], torch.from_numpy(y.astype(np.int64)), classes)

    return read("train"), read("t10k")


@dataclass
class DataSplits:
    train: Dataset
    test: Dataset
    classes: list[str]
    natural_images: bool  # horizontal flips are a valid augmentation (photos yes, digits no)
