"""MAE's reconstruction loss (arXiv 2111.06377, sec. 3 "Reconstruction target"): the mean squared error per patch,
averaged over the masked patches only ("similar to BERT"); the target optionally per-patch normalised pixels
(`MaskedAutoencoder.target`), which Table 1d finds better for the representation.
"""

from __future__ import annotations

import torch


def masked_mse(*, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_i mask_i * mean_j (pred_ij - target_ij)^2 / sum_i mask_i over every sample's patches i, pixels j.

    pred, target (B, N, p*p*C); mask (B, N), 1 where the patch was masked (0-weight patches do not count). A mask of
    ones gives the plain MSE over every patch (the full-token baseline).
    """
    if pred.shape != target.shape or mask.shape != pred.shape[:2]:
        raise ValueError(
            f"pred {tuple(pred.shape)}, target {tuple(target.shape)} and mask {tuple(mask.shape)} do not match"
        )
    per_patch = (pred - target).pow(2).mean(dim=-1)  # (B, N)
    return (per_patch * mask).sum() / mask.sum().clamp(min=1)
