"""DINO's attention picture: the class token's attention over the patches in the last layer, per head, and the mask
that keeps a fixed share of its mass.

"Emerging Properties in Self-Supervised Vision Transformers" (Caron et al., arXiv 2104.14294), Fig. 1 and 3:
self-attention of the [CLS] query of the last layer's heads; "we threshold the self-attention maps to keep 60% of
the mass" (sec. 4.2.1): per head, the patches sorted by attention, the smallest set of highest-attention patches
whose weights sum to 60% of the head's attention over the patches.

Attention to the prefix keys (the class token itself, DINOv2's registers) has no place in the image and is left out;
each head's map is renormalised over the patches before thresholding, as the repository's visualisation does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vitlab.explain.grid import grid_attention


@dataclass
class ClsAttention:
    """Shapes: maps and masks (H, Hp, Wp), maps renormalised over the patches; kept (H,) mass inside each mask."""

    maps: torch.Tensor
    masks: torch.Tensor
    kept: torch.Tensor
    layer: int
    stride: float  # input pixels per patch

    @property
    def num_heads(self) -> int:
        return self.maps.shape[0]


def mass_mask(weights: torch.Tensor, keep: float = 0.6) -> torch.Tensor:
    """Bool mask of the same shape (.., N): per row, the highest weights whose sum first reaches `keep` of the row's.

    The mask is minimal: dropping its smallest member leaves less than `keep` of the mass.
    """
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    w = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    sorted_w, order = w.sort(dim=-1, descending=True)
    before = sorted_w.cumsum(dim=-1) - sorted_w  # mass of the strictly higher-ranked tokens
    keep_sorted = before < keep - 1e-7  # a token joins while the mass so far is short of `keep`
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


@torch.no_grad()
def cls_attention(model: nn.Module, x: torch.Tensor, keep: float = 0.6, layer: int = -1) -> ClsAttention:
    """The class token's attention in `layer` (default: the last) for one image x (1, C, H, W), per head."""
    if x.shape[0] != 1:
        raise ValueError(f"cls_attention takes one image (1, C, H, W), got a batch of {x.shape[0]}")
    ((index, grid),) = grid_attention(model, x, [layer]).items()
    if not grid.q_prefix:
        raise ValueError("the model has no class token, so there is no [CLS] attention to draw (DINO's figure)")
    maps = grid.query_map(0)[0]  # (H, Hp, Wp), attention to the patches only
    H, Hp, Wp = maps.shape
    flat = maps.reshape(H, Hp * Wp)
    flat = flat / flat.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    masks = mass_mask(flat, keep)
    kept = (flat * masks).sum(dim=-1)
    return ClsAttention(flat.view(H, Hp, Wp), masks.view(H, Hp, Wp), kept, index, grid.k_stride)
