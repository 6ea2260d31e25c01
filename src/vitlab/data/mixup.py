"""Mixup (Zhang et al., arXiv 1710.09412) and CutMix (Yun et al., arXiv 1905.04899) on a batch."""

from __future__ import annotations

import numpy as np
import torch

from vitlab.losses import one_hot_smooth


def mix_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    mixup_alpha: float,
    cutmix_alpha: float,
    smoothing: float,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mixed images, soft targets (B, K)). With both alphas > 0, one of the two is picked per batch (p = 0.5)."""
    target = one_hot_smooth(labels, num_classes, smoothing)
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < 0.5)
    lam = float(rng.beta(cutmix_alpha, cutmix_alpha) if use_cutmix else rng.beta(mixup_alpha, mixup_alpha))
    flipped = images.flip(0)  # pair each sample with its mirror in the batch, as timm does
    if use_cutmix:
        H, W = images.shape[-2:]
        cut_h, cut_w = int(H * np.sqrt(1 - lam)), int(W * np.sqrt(1 - lam))
        cy, cx = int(rng.integers(H)), int(rng.integers(W))
        y0, y1 = np.clip(cy - cut_h // 2, 0, H), np.clip(cy + cut_h // 2, 0, H)
        x0, x1 = np.clip(cx - cut_w // 2, 0, W), np.clip(cx + cut_w // 2, 0, W)
        images = images.clone()
        images[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)  # the area actually kept
    else:
        images = images * lam + flipped * (1 - lam)
    return images, target * lam + target.flip(0) * (1 - lam)
