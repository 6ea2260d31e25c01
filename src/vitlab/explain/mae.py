"""What a masked autoencoder sees and fills in: original | masked | reconstruction, as in MAE's Figs. 2-4
(He et al., arXiv 2111.06377). The reconstruction shows the decoder's prediction on the masked patches with the
visible patches pasted back (the paper's "reconstruction + visible"); a norm-pix model's predictions are given each
true patch's mean and std back first (`MaskedAutoencoder.reconstruct`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

MASKED_GREY = 0.5  # the value shown on masked patches in the middle column


@dataclass
class Reconstruction:
    original: np.ndarray  # (B, H, W, C) in [0, 1]
    masked: np.ndarray  # (B, H, W, C): the visible patches, grey elsewhere
    reconstruction: np.ndarray  # (B, H, W, C): predicted masked patches + the visible ones
    mask: np.ndarray  # (B, N) 1 = masked
    loss: np.ndarray  # (B,) per-image MSE on the masked patches, in the model's target space


@torch.no_grad()
def mae_reconstruction(
    model: nn.Module,
    images: torch.Tensor,
    noise: torch.Tensor | None = None,
    seed: int = 0,
    mask_ratio: float | None = None,
) -> Reconstruction:
    """images (B, C, H, W), normalised as the model's inputs; noise (B, N) picks the mask (default: from `seed`);
    mask_ratio: the share masked (default: the model's)."""
    was_training = model.training
    model.eval()
    try:
        if noise is None:
            g = torch.Generator().manual_seed(seed)
            noise = torch.rand(images.shape[0], model.num_patches, generator=g).to(images.device)
        out = model(images, noise, mask_ratio)
        per_patch = (out.pred - model.target(images)).pow(2).mean(-1)  # (B, N)
        loss = (per_patch * out.mask).sum(1) / out.mask.sum(1).clamp(min=1)
        p2c = out.pred.shape[-1]
        masked_px = model.unpatchify(out.mask[:, :, None].expand(-1, -1, p2c)).bool()  # (B, C, H, W)
        recon = model.reconstruct(images, out.pred)
        recon = torch.where(masked_px, recon, images)
    finally:
        model.train(was_training)
    mean = torch.tensor(model.cfg.mean, device=images.device)[:, None, None]
    std = torch.tensor(model.cfg.std, device=images.device)[:, None, None]

    def pixels(x: torch.Tensor) -> np.ndarray:
        return (x * std + mean).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()  # (B, H, W, C)

    original = pixels(images)
    masked = np.where(masked_px.permute(0, 2, 3, 1).cpu().numpy(), MASKED_GREY, original)
    return Reconstruction(original, masked, pixels(recon), out.mask.cpu().numpy(), loss.cpu().numpy())


def draw_reconstruction(fig, rec: Reconstruction, titles: list[str] | None = None) -> None:
    """One row per image on `fig` (a matplotlib Figure): original | masked | reconstruction."""
    B = len(rec.original)
    axes = fig.subplots(B, 3, squeeze=False)
    ratio = rec.mask.mean(1)
    for i in range(B):
        row = (rec.original[i], rec.masked[i], rec.reconstruction[i])
        heads = ("original", f"masked ({ratio[i]:.0%})", f"reconstruction (MSE {rec.loss[i]:.3f})")
        for ax, img, head in zip(axes[i], row, heads, strict=True):
            grey = img.shape[-1] == 1
            ax.imshow(img[..., 0] if grey else img, cmap="gray" if grey else None, vmin=0, vmax=1,
                      interpolation="nearest")  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(head if titles is None else f"{titles[i]}: {head}", fontsize=8)
