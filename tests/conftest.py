from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(autouse=True)
def _seed_and_quiet():
    torch.manual_seed(0)
    logging.getLogger("vitlab").setLevel(logging.WARNING)
    yield


def make_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 6, size: int = 12, mode: str = "RGB"):
    """Tiny ImageFolder: each class a distinct colour pattern, so a model can learn it."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            arr[..., c % 3] += 150
            im = Image.fromarray(arr, "RGB").convert(mode)
            im.save(d / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "imgs")


def randomise_weights(model):
    """Perturb every parameter and BatchNorm statistic (HF zero-initialises biases), so every weight matters."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.05 if p.ndim > 1 else 0.2))
        for name, b in model.named_buffers():  # BatchNorm statistics, so eval-mode BN is not the identity
            if name.endswith("running_mean"):
                b.copy_(torch.randn_like(b) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)
    return model.eval()
