"""Position embeddings: resampling learned ones to a new grid, and fixed 2-D sine-cosine ones."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def resample_pos_embed(
    pos_embed: torch.Tensor, new_grid: tuple[int, int], num_prefix_tokens: int, mode: str = "bicubic"
) -> torch.Tensor:
    """Resize a (1, prefix + Hp*Wp, D) table to a new grid, keeping the class/distillation rows as they are.

    Bicubic as in DeiT and DINO; the original JAX ViT code uses bilinear (ViT paper, sec. 3.2).
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old = int(math.isqrt(grid.shape[1]))
    if old * old != grid.shape[1]:
        raise ValueError(f"position embedding has {grid.shape[1]} grid rows, not a square number")
    if (old, old) == tuple(new_grid):
        return pos_embed
    D = grid.shape[-1]
    grid = grid.reshape(1, old, old, D).permute(0, 3, 1, 2)  # (1, D, Hp, Wp)
    grid = F.interpolate(grid.float(), size=new_grid, mode=mode, align_corners=False).to(pos_embed.dtype)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], D)  # (1, N, D)
    return torch.cat([prefix, grid], dim=1)


def sincos_pos_embed_2d(
    grid_size: int, dim: int, temperature: float = 10000.0, style: str = "big_vision"
) -> torch.Tensor:
    """Fixed 2-D sine-cosine table, (grid*grid, dim) with columns [sin x, cos x, sin y, cos y].

    style "big_vision": frequencies as big_vision's `posemb_sincos_2d`, omega_i = T^(-i / (dim/4 - 1)) (the last
    one exactly 1/T); "mae": MAE's table, omega_i = T^(-i / (dim/4)), which its checkpoints (and HF's ViTMAE) hold.
    """
    if dim % 4 != 0:
        raise ValueError(f"embed_dim={dim} must be divisible by 4 for 2-D sincos position embedding")
    if style not in ("big_vision", "mae"):
        raise ValueError(f"style must be 'big_vision' or 'mae', got {style!r}")
    y, x = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    steps = dim // 4 if style == "mae" else (dim // 4 - 1 if dim > 4 else 1)
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float64) / steps)
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).float()
