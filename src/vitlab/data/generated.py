"""Data sets generated on the fly from data a package ships, for tasks that need no download.

`multi_digit_splits`: several of scikit-learn's 8x8 digits pasted into the cells of a 2x2 grid (16x16 images), each
labelled with the set of digits it shows (multi-label). Training composites use only training-split digits and test
composites only test-split digits, so no digit is seen in both.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from vitlab.data.datasets import DataSplits, load_digits_dataset, stratified_split
from vitlab.errors import DataError


class MultiLabelDataset(Dataset):
    """Images uint8 (N, C, H, W) with multi-hot float labels (N, K)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> None:
        if labels.ndim != 2 or labels.shape[1] != len(classes) or len(labels) != len(images):
            raise ValueError(f"labels must be (N={len(images)}, K={len(classes)}), got {tuple(labels.shape)}")
        self.images, self.labels, self.classes = images, labels.float(), classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]


def compose_digits(
    digits: torch.Tensor, targets: torch.Tensor, count: int, max_digits: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` composites: (count, 1, 16, 16) uint8 and (count, 10) multi-hot labels.

    Each composite takes 1..max_digits digits (uniformly many), drawn with replacement, into distinct random cells.
    """
    if not 1 <= max_digits <= 4:
        raise DataError(f"max_digits must be between 1 and 4 (a 2x2 grid), got {max_digits}")
    images = torch.zeros(count, 1, 16, 16, dtype=torch.uint8)
    labels = torch.zeros(count, 10)
    for i in range(count):
        k = int(rng.integers(1, max_digits + 1))
        cells = rng.choice(4, size=k, replace=False)
        for cell, j in zip(cells, rng.integers(0, len(digits), size=k), strict=True):
            r, c = divmod(int(cell), 2)
            images[i, :, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8] = digits[j]
            labels[i, int(targets[j])] = 1.0
    return images, labels


def multi_digit_splits(
    max_digits: int = 3, train_size: int = 3000, test_size: int = 600, test_fraction: float = 0.2, seed: int = 0
) -> DataSplits:
    full = load_digits_dataset()
    tr, te = stratified_split(full.targets, test_fraction)
    rng = np.random.default_rng(seed)
    parts = []
    for idx, n in ((tr, train_size), (te, test_size)):
        sub = full.subset(idx)
        images, labels = compose_digits(sub.images, sub.labels, n, max_digits, rng)
        parts.append(MultiLabelDataset(images, labels, full.classes))
    return DataSplits(parts[0], parts[1], full.classes, natural_images=False)
