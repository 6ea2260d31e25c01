"""SimCLR's view augmentation as tensor ops (no torchvision): random resized crop, horizontal flip, colour jitter,
random greyscale, Gaussian blur; and the data set that yields several views of each image.

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", arXiv 2002.05709, Appendix A:
crop of 8%..100% of the area with aspect ratio 3/4..4/3 resized to the input side; flip with p 0.5; colour jitter
with p 0.8 of brightness, contrast and saturation 0.8 s and hue 0.2 s in random order (strength s = 1 on ImageNet,
0.5 on CIFAR-10); greyscale with p 0.2; Gaussian blur with p 0.5, sigma 0.1..2.0, kernel 10% of the side (ImageNet
only). `ViewAugment.simclr` is that recipe; `ViewAugment.small` is sized for small images without a natural
orientation (digits): no flip (a mirrored 3 is no digit), crops of at least 25% of the area (an 8% crop of a 28-pixel
digit is a stroke fragment), jitter at s = 0.5 and a mild 3-pixel blur (sigma up to 1). Greyscale, saturation and hue
change nothing on grey images, so those stay as they are on digits.

Differences from torchvision's ops, which the SimCLR code used: the crop is resized with antialiased bilinear
interpolation of float images (not PIL's uint8); hue is shifted in HSV as torchvision does, written out here.
Randomness comes from torch's global generator, which the engine seeds per epoch (and DataLoader per worker).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from vitlab.data.transforms import _LUMA, match_channels

__all__ = ["MultiViewDataset", "ViewAugment", "gaussian_blur", "random_resized_crop", "rgb_to_hsv", "hsv_to_rgb"]


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand(()).item()


# ----- geometric ----------------------------------------------------------------------------------------------------
def crop_box(H: int, W: int, scale: tuple[float, float], ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop with area fraction in `scale` and aspect w/h log-uniform in `ratio`;
    after 10 misses, the centre crop of the ratio nearest the image's (the rule of Inception-style cropping)."""
    area = H * W
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(*scale)
        aspect = math.exp(_uniform(*log_r))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= W and 0 < h <= H:
            top, left = torch.randint(0, H - h + 1, ()).item(), torch.randint(0, W - w + 1, ()).item()
            return top, left, h, w
    aspect = W / H
    if aspect < ratio[0]:
        w, h = W, round(W / ratio[0])
    elif aspect > ratio[1]:
        h, w = H, round(H * ratio[1])
    else:
        h, w = H, W
    return (H - h) // 2, (W - w) // 2, h, w


def random_resized_crop(
    x: torch.Tensor, size: int, scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)
) -> torch.Tensor:
    """(C, H, W) float -> (C, size, size): a random crop (`crop_box`) resized, bilinear and antialiased."""
    top, left, h, w = crop_box(x.shape[-2], x.shape[-1], scale, ratio)
    crop = x[:, top : top + h, left : left + w]
    return F.interpolate(crop[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


# ----- colour -------------------------------------------------------------------------------------------------------
def _grey(x: torch.Tensor) -> torch.Tensor:
    """(C, H, W) -> (1, H, W) luminance (ITU-R 601 for RGB; a grey image is its own)."""
    return x if x.shape[0] == 1 else (x * _LUMA[:, None, None].to(x)).sum(0, keepdim=True)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(3, H, W) RGB in [0, 1] -> (3, H, W) HSV in [0, 1] (hue as a fraction of the colour circle)."""
    r, g, b = x
    mx, mn = x.max(0).values, x.min(0).values
    delta = mx - mn
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(mx == r, ((g - b) / safe) % 6, torch.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = torch.where(delta > 0, h / 6, torch.zeros_like(h))
    s = torch.where(mx > 0, delta / torch.where(mx > 0, mx, torch.ones_like(mx)), torch.zeros_like(mx))
    return torch.stack([h, s, mx])


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_hsv`."""
    h, s, v = x
    k = torch.stack([(n + h * 6) % 6 for n in (5.0, 3.0, 1.0)])  # (3, H, W): one phase per channel R, G, B
    return v - v * s * (torch.minimum(k, 4 - k).clamp(0, 1))


def adjust_hue(x: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate the hue of an RGB image by `shift` (fraction of the circle, -0.5..0.5)."""
    hsv = rgb_to_hsv(x)
    hsv[0] = (hsv[0] + shift) % 1.0
    return hsv_to_rgb(hsv)


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, saturation: float, hue: float) -> torch.Tensor:
    """The four jitters in random order, each factor uniform in [max(0, 1 - a), 1 + a] (hue: shift in [-h, h]);
    saturation and hue only on RGB images (they do nothing to grey ones)."""
    ops = []
    if brightness > 0:
        f = _uniform(max(0.0, 1 - brightness), 1 + brightness)
        ops.append(lambda t, f=f: (t * f).clamp(0, 1))
    if contrast > 0:
        f = _uniform(max(0.0, 1 - contrast), 1 + contrast)
        ops.append(lambda t, f=f: (f * t + (1 - f) * _grey(t).mean()).clamp(0, 1))
    if x.shape[0] == 3 and saturation > 0:
        f = _uniform(max(0.0, 1 - saturation), 1 + saturation)
        ops.append(lambda t, f=f: (f * t + (1 - f) * _grey(t)).clamp(0, 1))
    if x.shape[0] == 3 and hue > 0:
        shift = _uniform(-hue, hue)
        ops.append(lambda t, s=shift: adjust_hue(t, s))
    for i in torch.randperm(len(ops)).tolist():
        x = ops[i](x)
    return x


# ----- blur ---------------------------------------------------------------------------------------------------------
def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """(C, H, W) -> (C, H, W): separable Gaussian of odd `kernel_size`, reflect-padded at the borders."""
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    r = kernel_size // 2
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()  # (K,)
    C = x.shape[0]
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    y = F.pad(x[None], (r, r, r, r), mode=mode)  # (1, C, H + 2r, W + 2r)
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)  # along W
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)  # along H
    return y[0]


# ----- the recipe ---------------------------------------------------------------------------------------------------
@dataclass
class ViewAugment:
    """uint8 (C, H, W) -> one random normalised view (in_chans, img_size, img_size), SimCLR's composition."""

    img_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_scale: tuple[float, float] = (0.08, 1.0)  # area fraction of the random crop (paper: 0.08..1)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range of the crop (paper)
    hflip: float = 0.5  # probability of a horizontal flip; 0 for images whose mirror is another thing (digits)
    jitter: float = 0.8  # probability of colour jitter (paper: 0.8)
    strength: float = 1.0  # colour-jitter strength s: brightness/contrast/saturation 0.8 s, hue 0.2 s
    grey: float = 0.2  # probability of greyscale (paper: 0.2)
    blur: float = 0.5  # probability of Gaussian blur (paper, ImageNet: 0.5)
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # blur sigma range in pixels (paper)
    blur_kernel: int = 0  # odd kernel side; 0 = about 10% of img_size, as the paper (at least 3)

    def __post_init__(self) -> None:
        for name in ("hflip", "jitter", "grey", "blur"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)}")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        if self.blur_kernel == 0:
            k = max(3, round(0.1 * self.img_size))
            self.blur_kernel = k if k % 2 else k + 1
        if len(self.mean) != self.in_chans:  # grey models given RGB statistics: average them (as ImageTransform)
            self.mean = (sum(self.mean) / len(self.mean),) * self.in_chans
            self.std = (sum(self.std) / len(self.std),) * self.in_chans
        self._mean = torch.tensor(self.mean)[:, None, None]
        self._std = torch.tensor(self.std)[:, None, None]

    @classmethod
    def simclr(cls, img_size: int, in_chans: int, mean, std, **kw) -> ViewAugment:
        """The paper's ImageNet recipe (natural images)."""
        return cls(img_size, in_chans, tuple(mean), tuple(std), **kw)

    @classmethod
    def small(cls, img_size: int, in_chans: int, mean, std, **kw) -> ViewAugment:
        """Small images without a natural orientation (digits): no flip, larger crops, s = 0.5, a mild blur."""
        base = dict(crop_scale=(0.25, 1.0), hflip=0.0, strength=0.5, blur_sigma=(0.1, 1.0), blur_kernel=3)
        return cls(img_size, in_chans, tuple(mean), tuple(std), **{**base, **kw})

    @classmethod
    def for_model(cls, model, natural: bool, **kw) -> ViewAugment:
        """The recipe for a model's input size, channels and normalisation: `simclr` on natural images, else `small`."""
        cfg = model.cfg
        return (cls.simclr if natural else cls.small)(cfg.img_size, cfg.in_chans, cfg.mean, cfg.std, **kw)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        x = match_channels(img.float() / 255.0, self.in_chans)
        x = random_resized_crop(x, self.img_size, self.crop_scale, self.crop_ratio)
        if torch.rand(()) < self.hflip:
            x = x.flip(-1)
        if torch.rand(()) < self.jitter:
            s = self.strength
            x = color_jitter(x, 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
        if x.shape[0] == 3 and torch.rand(()) < self.grey:
            x = _grey(x).expand(3, -1, -1)
        if torch.rand(()) < self.blur:
            x = gaussian_blur(x, self.blur_kernel, _uniform(*self.blur_sigma))
        return (x - self._mean) / self._std


class MultiViewDataset(Dataset):
    """(uint8 image, label) -> ([view_1, ..., view_V], label), each view an independent draw of its transform;
    what `collate_views` stacks into a MultiViewBatch. `transforms` holds one callable per view."""

    def __init__(self, base, transforms: list[Callable[[torch.Tensor], torch.Tensor]], labels: bool = True) -> None:
        if not transforms:
            raise ValueError("MultiViewDataset needs at least one view transform")
        self.base, self.transforms, self.labels = base, list(transforms), labels

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, label = self.base[i]
        return [t(img) for t in self.transforms], (label if self.labels else None)
