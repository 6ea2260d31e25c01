"""MAE's per-sample random masking by shuffling (He et al., "Masked Autoencoders Are Scalable Vision Learners",
arXiv 2111.06377, sec. 3 "Masking" and "Simple implementation").

Each sample's N patch indices are shuffled by sorting i.i.d. noise; the first K = int(N * (1 - ratio)) of the shuffle
are kept (visible to the encoder), the rest are masked. `ids_restore` (the inverse permutation) puts the decoder's
sequence [visible..., mask tokens...] back into patch order. Pure functions of the noise: the same noise gives the
same mask (how the parity test compares with transformers' `ViTMAEForPreTraining`, which takes a `noise` argument).

Shapes: noise (B, N); ids_shuffle, ids_restore (B, N) int64; ids_keep (B, K); mask (B, N) float, 1 = masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RandomMask:
    ids_keep: torch.Tensor  # (B, K) indices of the visible patches, in shuffle order
    ids_restore: torch.Tensor  # (B, N) position of each patch in the shuffled order (argsort of ids_shuffle)
    mask: torch.Tensor  # (B, N) 0 = visible, 1 = masked, in patch order


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """K = int(N * (1 - ratio)): the reference's rounding (down), so 75% of 196 patches keeps 49."""
    if not 0 <= mask_ratio < 1:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return max(1, int(num_patches * (1 - mask_ratio)))


def random_masking(noise: torch.Tensor, mask_ratio: float) -> RandomMask:
    """Keep the patches with the K smallest noise values of each row (ascending sort: small is kept)."""
    if noise.dim() != 2:
        raise ValueError(f"noise must be (B, N), got shape {tuple(noise.shape)}")
    B, N = noise.shape
    K = num_visible(N, mask_ratio)
    ids_shuffle = torch.argsort(noise, dim=1)  # (B, N)
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, N) the inverse permutation
    mask = torch.ones(B, N, device=noise.device)
    mask[:, :K] = 0  # in shuffle order: the first K are visible
    mask = torch.gather(mask, 1, ids_restore)  # (B, N) back in patch order
    return RandomMask(ids_shuffle[:, :K], ids_restore, mask)


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, N, D) tokens, (B, K) indices -> (B, K, D): each sample's tokens at its own indices."""
    return torch.gather(x, 1, index[:, :, None].expand(-1, -1, x.shape[-1]))


def unshuffle(visible: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    """(B, K, D) visible tokens + a (1, 1, D) mask token -> (B, N, D) in patch order: mask tokens where masked."""
    B, K, D = visible.shape
    N = ids_restore.shape[1]
    x = torch.cat([visible, mask_token.expand(B, N - K, D)], dim=1)  # (B, N, D) in shuffle order
    return gather_tokens(x, ids_restore)  # (B, N, D) in patch order
