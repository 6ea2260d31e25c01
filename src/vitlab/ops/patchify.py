"""Images <-> rows of patch pixels, the MAE reconstruction target (arXiv 2111.06377, sec. 3 "Reconstruction target").

A patch's row is its pixels in (row, column, channel) order, `p*p*C` values, as in the MAE reference and
transformers' `ViTMAEForPreTraining.patchify`, so a decoder's predictions compare to either's.

Shapes: images (B, C, H, W) with H = Hp*p, W = Wp*p; patches (B, Hp*Wp, p*p*C), patches in row-major order.
"""

from __future__ import annotations

import torch


def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    B, C, H, W = images.shape
    if H % p or W % p:
        raise ValueError(f"image side {H}x{W} is not a multiple of the patch size {p}")
    x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)  # (B, Hp, Wp, p, p, C)
    return x.reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(patches: torch.Tensor, p: int, grid: tuple[int, int], in_chans: int) -> torch.Tensor:
    """The inverse of `patchify`: (B, Hp*Wp, p*p*C) -> (B, C, Hp*p, Wp*p)."""
    B, N, _ = patches.shape
    Hp, Wp = grid
    if Hp * Wp != N or patches.shape[-1] != p * p * in_chans:
        raise ValueError(
            f"patches of shape {tuple(patches.shape)} do not form a {Hp}x{Wp} grid of {p}x{p}x{in_chans} patches"
        )
    x = patches.reshape(B, Hp, Wp, p, p, in_chans).permute(0, 5, 1, 3, 2, 4)  # (B, C, Hp, p, Wp, p)
    return x.reshape(B, in_chans, Hp * p, Wp * p)
