"""Tensor transforms from uint8 images (C, H, W) to normalised model inputs, no torchvision needed."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vitlab.errors import DataError

_LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R 601, as PIL's convert("L")


def match_channels(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Grey -> RGB by repetition, RGB -> grey by luminance; other mismatches are errors."""
    C = x.shape[0]
    if in_chans == C:
        return x
    if C == 1 and in_chans == 3:
        return x.expand(3, -1, -1)
    if C == 3 and in_chans == 1:
        return (x * _LUMA[:, None, None].to(x)).sum(0, keepdim=True)
    raise DataError(f"images have {C} channels but the model expects in_chans={in_chans}")


def random_affine(x: torch.Tensor, degrees: float = 10.0, scale: float = 0.1, shift: float = 0.08) -> torch.Tensor:
    """Rotate by up to `degrees`, scale by 1 +- `scale`, shift by up to `shift` of the side; bilinear, zero fill."""
    angle = math.radians((torch.rand(()).item() * 2 - 1) * degrees)
    s = 1 + (torch.rand(()).item() * 2 - 1) * scale
    tx, ty = ((torch.rand(2) * 2 - 1) * shift * 2).tolist()  # grid coordinates span 2 per side
    cos, sin = math.cos(angle) / s, math.sin(angle) / s
    theta = torch.tensor([[cos, -sin, tx], [sin, cos, ty]], dtype=x.dtype)[None]
    grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)
    return F.grid_sample(x[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


@dataclass
class ImageTransform:
    img_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: bool = False
    hflip: bool = False  # random horizontal flip (train only)
    pad_crop: bool = True  # random translation by padding + cropping (train only)
    affine: bool = False  # small random rotation/scale/shift (train only): for digits, where flips are wrong
    # eval only, timm's rule: resize to img_size / crop_pct, then take the centre img_size square
    crop_pct: float = 1.0
    interpolation: str = "bilinear"  # resizing: "bilinear" or "bicubic" (timm's eval default), antialiased

    @classmethod
    def for_model(cls, model, train: bool = False, **kw) -> ImageTransform:
        """The transform a model's config and `pretrained_cfg` ask for: size, channels, normalisation, eval crop."""
        cfg, pc = model.cfg, getattr(model, "pretrained_cfg", {})
        crop = dict(crop_pct=pc.get("crop_pct", 1.0), interpolation=pc.get("interpolation", "bilinear"))
        return cls(cfg.img_size, cfg.in_chans, cfg.mean, cfg.std, train=train, **crop, **kw)

    def __post_init__(self) -> None:
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {self.interpolation!r}")
        if len(self.mean) != self.in_chans:  # grey models given RGB statistics: average them
            self.mean = (sum(self.mean) / len(self.mean),) * self.in_chans
            self.std = (sum(self.std) / len(self.std),) * self.in_chans
        self._mean = torch.tensor(self.mean)[:, None, None]
        self._std = torch.tensor(self.std)[:, None, None]

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        x = img.float() / 255.0
        x = match_channels(x, self.in_chans)
        H, W = x.shape[-2:]
        if H != W:  # centre square, then resize
            s = min(H, W)
            top, left = (H - s) // 2, (W - s) // 2
            x = x[:, top : top + s, left : left + s]
        size = self.img_size if self.train else math.floor(self.img_size / self.crop_pct)
        if x.shape[-1] != size:
            x = F.interpolate(x[None], size=(size, size), mode=self.interpolation, antialias=True)[0]
            x = x.clamp(0, 1) if self.interpolation == "bicubic" else x  # bicubic overshoots; PIL's uint8 clips
        if size != self.img_size:  # the centre crop
            top = (size - self.img_size) // 2
            x = x[:, top : top + self.img_size, top : top + self.img_size]
        if self.train and self.affine:
            x = random_affine(x)
        elif self.train:
            # Translation by up to 1/8 of the side; skipped below 16 px, where one pixel is already >6%.
            if self.pad_crop and self.img_size >= 16:
                p = self.img_size // 8
                x = F.pad(x, (p, p, p, p))
                i, j = torch.randint(0, 2 * p + 1, (2,)).tolist()
                x = x[:, i : i + self.img_size, j : j + self.img_size]
            if self.hflip and torch.rand(()) < 0.5:
                x = x.flip(-1)
        return (x - self._mean) / self._std


class TransformedDataset(torch.utils.data.Dataset):
    def __init__(self, base, transform: ImageTransform) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, label = self.base[i]
        return self.transform(img), label
