"""Image to patch tokens: a convolution with kernel = stride = patch size (ViT, arXiv 2010.11929, sec. 3.1)."""

from __future__ import annotations

import torch
from torch import nn

from vitlab.errors import shape_text
from vitlab.fx import notrace


class PatchEmbed(nn.Module):
    """Shapes: (B, C, H, W) -> (B, Hp*Wp, D) with Hp = H / patch, Wp = W / patch."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, strict_size: bool = True) -> None:
        super().__init__()
        self.strict_size = strict_size  # False: any multiple of the patch size (models without a position table)
        if img_size % patch_size != 0:
            raise ValueError(f"img_size={img_size} is not a multiple of patch_size={patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_patch_input(x, self.in_chans, self.patch_size, self.img_size if self.strict_size else 0)
        x = self.proj(x)  # (B, D, Hp, Wp)
        return x.flatten(2).transpose(1, 2)  # (B, N, D)


@notrace
def check_patch_input(x: torch.Tensor, in_chans: int, patch_size: int, img_size: int) -> None:
    """One clear error for images PatchEmbed cannot cut: wrong rank or channels, not img_size (0: any multiple of
    the patch size). Written in the Python subset TorchScript compiles (it runs inside scripted models)."""
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise ValueError(f"expected images of shape (B, {in_chans}, H, W), got {shape_text(x)}")
    H, W = x.shape[-2], x.shape[-1]
    if img_size == 0:
        if H % patch_size != 0 or W % patch_size != 0:
            raise ValueError(f"image size {H}x{W} is not a multiple of patch_size={patch_size}")
    elif (img_size, img_size) != (H, W):
        raise ValueError(
            f"expected {img_size}x{img_size} images, got {H}x{W} "
            f"(create the model with img_size={x.shape[-1]} to resample its position embedding)"
        )


class TubeletEmbed(nn.Module):
    """Video to tubelet tokens: a Conv3d with kernel = stride = (t, p, p) (ViViT, arXiv 2103.15691, sec. 3.2, Fig. 3).

    Shapes: clips (B, T, C, H, W) (frames first, as transformers' video models take them) -> (B, T'*Hp*Wp, D) with
    T' = T / t, tokens ordered time-major (index t'*Hp*Wp + h*Wp + w). t = 1 is ViT's patch embedding per frame.
    """

    def __init__(self, img_size: int, patch_size: int, tubelet_t: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        if img_size % patch_size != 0:
            raise ValueError(f"img_size={img_size} is not a multiple of patch_size={patch_size}")
        self.img_size, self.patch_size, self.tubelet_t, self.in_chans = img_size, patch_size, tubelet_t, in_chans
        self.grid_size = img_size // patch_size
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(tubelet_t, patch_size, patch_size),
                              stride=(tubelet_t, patch_size, patch_size))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x.transpose(1, 2))  # (B, C, T, H, W) -> (B, D, T', Hp, Wp)
        return x.flatten(2).transpose(1, 2)  # (B, T'*Hp*Wp, D)
