"""DINO's multi-crop augmentation on image tensors (no torchvision): 2 global crops + N local crops per image.

"Emerging Properties in Self-Supervised Vision Transformers" (Caron et al., arXiv 2104.14294), sec. 3.1 and
appendix: global crops cover 40-100% of the image area (`global_crops_scale` (0.4, 1.0), the repository's default),
local crops 5-40% at a smaller size (96 vs 224 px); every crop is flipped with p 0.5, colour-jittered with p 0.8
(brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, in random order) and made grey with p 0.2 (BYOL's recipe);
blur (sigma 0.1-2.0 px at 224 px) always on the first global crop, with p 0.1 on the second and 0.5 on locals;
solarisation with p 0.2 on the second global crop only.

Differences from the reference code: the crops are taken from uint8 (C, H, W) tensors with torch ops, resized
bicubically with antialiasing; hue is rotated in YIQ space (a linear map, where torchvision shifts HSV hue);
the blur's sigma scales with the crop size (sigma * size / 224), so small images are blurred as much as ImageNet
crops are relative to their size. Grey images (C = 1) get brightness and contrast only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vitlab.data.transforms import match_channels

__all__ = ["MultiCrop", "MultiCropBatch", "MultiCropDataset", "collate_multicrop", "random_resized_crop"]


def random_resized_crop(
    img: torch.Tensor, size: int, scale: tuple[float, float], gen: torch.Generator, ratio=(3 / 4, 4 / 3)
) -> torch.Tensor:
    """A crop of a random area fraction in `scale` and aspect ratio in `ratio` (log-uniform), resized to size x size.

    img: (C, H, W) float in [0, 1]. Ten tries as torchvision, then the centre crop of the whole image.
    """
    C, H, W = img.shape
    area = H * W
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand((), generator=gen).item())
        log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand((), generator=gen).item()
        w = round(math.sqrt(target * math.exp(log_r)))
        h = round(math.sqrt(target / math.exp(log_r)))
        if 0 < w <= W and 0 < h <= H:
            top = int(torch.randint(0, H - h + 1, (), generator=gen))
            left = int(torch.randint(0, W - w + 1, (), generator=gen))
            break
    else:
        h = w = min(H, W)
        top, left = (H - h) // 2, (W - w) // 2
    crop = img[:, top : top + h, left : left + w]
    out = F.interpolate(crop[None], size=(size, size), mode="bicubic", align_corners=False, antialias=True)[0]
    return out.clamp(0, 1)  # bicubic overshoots


def _grey(x: torch.Tensor) -> torch.Tensor:
    """(3, H, W) -> (1, H, W) luma (ITU-R 601, as PIL's convert('L'))."""
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]


_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _rotate_hue(x: torch.Tensor, turns: float) -> torch.Tensor:
    """Hue rotated by `turns` of a full circle: the chroma plane (I, Q) of YIQ rotated, luma kept."""
    a = 2 * math.pi * turns
    rot = torch.tensor([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]])
    m = torch.linalg.inv(_RGB2YIQ) @ rot @ _RGB2YIQ
    return torch.einsum("ij,jhw->ihw", m, x)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    C = x.shape[0]
    y = F.pad(x[None], (r, r, r, r), mode="reflect") if min(x.shape[-2:]) > r else F.pad(x[None], (r,) * 4, "replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)  # (1, C, H + 2r, W)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)  # (1, C, H, W)
    return y[0]


@dataclass(frozen=True)
class MultiCrop:
    """uint8 (C, H, W) image -> [global_1, global_2, local_1, ..., local_N], each normalised (C', size, size)."""

    global_size: int  # side of the global crops (the model's input size)
    local_size: int  # side of the local crops (DINO: 96 for 224 globals)
    num_local: int = 6  # local crops (DINO's ViT-S recipe: 10; the repository's default: 8)
    in_chans: int = 3  # channels the model takes
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    hflip: bool = True  # False for images whose orientation carries meaning (digits)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue

    def __post_init__(self) -> None:
        for name, (lo, hi) in (("global_scale", self.global_scale), ("local_scale", self.local_scale)):
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name} must satisfy 0 < min <= max <= 1, got {(lo, hi)}")
        if self.num_local < 0 or self.global_size < 1 or self.local_size < 1:
            raise ValueError(f"crop sizes must be >= 1 and num_local >= 0, got {self.global_size}, "
                             f"{self.local_size}, {self.num_local}")  # fmt: skip

    def __call__(self, img: torch.Tensor, gen: torch.Generator | None = None) -> list[torch.Tensor]:
        gen = gen if gen is not None else torch.default_generator
        x = match_channels(img.float() / 255.0, self.in_chans)
        crops = [
            self._view(x, self.global_size, self.global_scale, gen, blur_p=1.0, solarize_p=0.0),
            self._view(x, self.global_size, self.global_scale, gen, blur_p=0.1, solarize_p=0.2),
        ]
        crops += [self._view(x, self.local_size, self.local_scale, gen, 0.5, 0.0) for _ in range(self.num_local)]
        mean = torch.tensor(self._stats(self.mean))[:, None, None]
        std = torch.tensor(self._stats(self.std))[:, None, None]
        return [(c - mean) / std for c in crops]

    def _stats(self, v: tuple[float, ...]) -> tuple[float, ...]:
        return v if len(v) == self.in_chans else (sum(v) / len(v),) * self.in_chans

    def _view(self, x, size, scale, gen, blur_p: float, solarize_p: float) -> torch.Tensor:
        def coin(p: float) -> bool:
            return p >= 1 or (p > 0 and torch.rand((), generator=gen).item() < p)

        def uniform(lo: float, hi: float) -> float:
            return lo + (hi - lo) * torch.rand((), generator=gen).item()

        v = random_resized_crop(x, size, scale, gen)
        if self.hflip and coin(0.5):
            v = v.flip(-1)
        colour = v.shape[0] == 3
        if coin(0.8):
            b, c, s, h = self.jitter
            for op in torch.randperm(4, generator=gen).tolist():
                if op == 0 and b:
                    v = v * uniform(1 - b, 1 + b)
                elif op == 1 and c:
                    mean = (_grey(v) if colour else v).mean()
                    v = (v - mean) * uniform(1 - c, 1 + c) + mean
                elif op == 2 and s and colour:
                    g = _grey(v)
                    v = (v - g) * uniform(1 - s, 1 + s) + g
                elif op == 3 and h and colour:
                    v = _rotate_hue(v, uniform(-h, h))
                v = v.clamp(0, 1)
        if colour and coin(0.2):
            v = _grey(v).expand(3, -1, -1).clone()
        if coin(blur_p):
            v = _gaussian_blur(v, uniform(0.1, 2.0) * size / 224).clamp(0, 1)
        if coin(solarize_p):
            v = torch.where(v >= 0.5, 1 - v, v)  # PIL's solarize at threshold 128
        return v


@dataclass
class MultiCropBatch:
    """Views of B images: crops[v] is (B, C, S_v, S_v), the global views first; labels (B,) (unused by DINO)."""

    crops: list[torch.Tensor]
    labels: torch.Tensor

    def to(self, device) -> MultiCropBatch:
        return MultiCropBatch([c.to(device, non_blocking=True) for c in self.crops], self.labels.to(device))

    def __len__(self) -> int:
        return self.labels.shape[0]


class MultiCropDataset(torch.utils.data.Dataset):
    """(uint8 image, label) -> (list of views, label); `transform` is a MultiCrop or any image -> [views] callable."""

    def __init__(self, base, transform) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, label = self.base[i]
        views = self.transform(img)
        return (views if isinstance(views, list) else [views]), label


def collate_multicrop(samples: list) -> MultiCropBatch:
    """[(views, label)] -> MultiCropBatch, view by view."""
    counts = {len(v) for v, _ in samples}
    if len(counts) != 1:
        raise ValueError(f"every sample needs the same number of views, got {sorted(counts)}")
    crops = [torch.stack([v[i] for v, _ in samples]) for i in range(counts.pop())]
    labels = torch.as_tensor([int(label) for _, label in samples], dtype=torch.long)
    return MultiCropBatch(crops, labels)
