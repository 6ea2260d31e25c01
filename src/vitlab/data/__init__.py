"""Data: parse a data spec (`digits`, `mnist5k[:FILE]`, `cifar10:DIR`, `cifar100:DIR`, `mnist:DIR`, an ImageFolder)."""

from __future__ import annotations

from pathlib import Path

from vitlab.data.datasets import (
    MNIST5K_TEST,
    ArrayDataset,
    DataSplits,
    ImageFolder,
    folder_splits,
    hold_out_classes,
    load_cifar,
    load_digits_dataset,
    load_mnist,
    load_mnist5k,
    read_image,
    resolve_classes,
    stratified_split,
)
from vitlab.data.transforms import ImageTransform, TransformedDataset
from vitlab.errors import DataError

__all__ = [
    "ArrayDataset",
    "DataSplits",
    "ImageFolder",
    "ImageTransform",
    "TransformedDataset",
    "hold_out_classes",
    "load_data",
    "read_image",
    "resolve_classes",
    "stratified_split",
]


def load_data(spec: str, test_fraction: float = 0.2) -> DataSplits:
    """Train/test splits for a data spec. Splits made here are fixed (seed 0) so every run sees the same test set."""
    kind, _, arg = spec.partition(":")
    if spec == "digits":
        full = load_digits_dataset()
        tr, te = stratified_split(full.targets, test_fraction)
        return DataSplits(full.subset(tr), full.subset(te), full.classes, natural_images=False)
    if kind == "mnist5k":
        # A fixed 4000/1000 split whatever --test-fraction says, so every figure on it uses the same test set.
        full = load_mnist5k(arg or None)
        tr, te = stratified_split(full.targets, MNIST5K_TEST / len(full) if len(full) > MNIST5K_TEST else 0.2)
        return DataSplits(full.subset(tr), full.subset(te), full.classes, natural_images=False)
    if kind in ("cifar10", "cifar100") and arg:
        train, test = load_cifar(arg, 10 if kind == "cifar10" else 100)
        return DataSplits(train, test, train.classes, natural_images=True)
    if kind == "mnist" and arg:
        train, test = load_mnist(arg)
        return DataSplits(train, test, train.classes, natural_images=False)
    root = Path(spec)
    if not root.exists():
        raise DataError(
            f"--data {spec!r}: not a directory and not one of digits, mnist5k, cifar10:DIR, cifar100:DIR, mnist:DIR"
        )
    if not root.is_dir():
        raise DataError(f"--data {spec}: is a file, not a directory (expected ROOT/CLASS/IMAGE, or cifar10:DIR, ...)")
    train, test = folder_splits(root, ImageFolder, test_fraction, "image")
    return DataSplits(train, test, train.classes, natural_images=True)
