"""CPVT: "Conditional Positional Encodings for Vision Transformers" (Chu et al., arXiv 2102.10882).

A DeiT without any absolute position table: a Position Encoding Generator (PEG) — a 3x3 depthwise convolution with
bias over the patch-token grid, added back to its input — runs after the first encoder block (sec. 3.2, Table 5), and
the head averages the patch tokens (CPVT-GAP, no class token). Because position comes from zero-padded convolution,
the model runs at any input that is a multiple of the patch size with nothing interpolated.
Parameter names: the ViT's, plus `pos_block.proj` (the official repository's `pos_block.0.proj.0`).
"""

from __future__ import annotations

import torch
from torch import nn

from vitlab.models.base import IMAGENET_MEAN, IMAGENET_STD
from vitlab.models.vit import MICRO_DIGITS, VisionTransformer, ViTConfig
from vitlab.registry import register_variants


class PEG(nn.Module):
    """Shapes: patch tokens (B, Hp*Wp, D) on an (Hp, Wp) grid -> same; x + DWConv3x3(x)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=True)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        B, N, D = x.shape
        feat = x.transpose(1, 2).reshape(B, D, grid[0], grid[1])  # (B, D, Hp, Wp)
        return (self.proj(feat) + feat).flatten(2).transpose(1, 2)  # (B, N, D)


class CPVT(VisionTransformer):
    accepts_token_subsets = False  # the PEG convolves the full patch grid

    def __init__(self, cfg: ViTConfig) -> None:
        if cfg.pos_embed != "none":
            raise ValueError("CPVT has no absolute position embedding: pos_embed must be 'none'")
        super().__init__(cfg)
        self.pos_block = PEG(cfg.embed_dim)
        self.peg_after = 0  # index of the block the PEG follows (sec. 4.4: after the first block works best)

    def _after_block(self, i: int, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if i != self.peg_after:
            return x
        prefix, patches = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        return torch.cat([prefix, self.pos_block(patches, grid)], dim=1)


_GAP = dict(pos_embed="none", class_token=False, global_pool="avg", mean=IMAGENET_MEAN, std=IMAGENET_STD)
_VARIANTS = {
    "cpvt_tiny_patch16_224": dict(**_GAP, embed_dim=192, depth=12, num_heads=3),
    "cpvt_small_patch16_224": dict(**_GAP, embed_dim=384, depth=12, num_heads=6),
    "cpvt_base_patch16_224": dict(**_GAP, embed_dim=768, depth=12, num_heads=12),
    # the micro ViT's 8x8-digits config, as CPVT-GAP
    "cpvt_micro_patch4_8": {**_GAP, **MICRO_DIGITS, "patch_size": 4, "mean": (0.5,), "std": (0.5,)},
}


register_variants(_VARIANTS, family="vit", config_cls=ViTConfig, model_cls=CPVT)
