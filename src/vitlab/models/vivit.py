"""ViViT: a video vision transformer on tubelet tokens — model 1 (joint space-time) and model 2 (factorised encoder).

Arnab et al., "ViViT: A Video Vision Transformer", arXiv 2103.15691.
- Sec. 3.2, Fig. 3: tubelet embedding, non-overlapping t x p x p tubelets projected by one Conv3d.
- Model 1 (sec. 3.3): every space-time token attends to every other (a ViT over T' * Hp * Wp tokens + a class token).
- Model 2, factorised encoder (sec. 3.3, Fig. 4): a spatial transformer (Ls blocks) runs on the tokens of each
  temporal index with its own class token; the per-frame class tokens, with a temporal class token and position
  table, go through a temporal transformer (Lt blocks); the head reads the temporal class token.
- Sec. 3.4: initialisation from an image ViT (the position table repeated over time, the 2-D patch filter inflated
  by averaging or central-frame initialisation) is `vitlab.models.inflate`.

Differs from transformers' `VivitForVideoClassification` (model 1 only) in layout: q/k/v are one fused projection and
the parameter names are timm's ViT names (`patch_embed.proj`, `blocks.N.attn.qkv`, `norm`, `head`), so an image
ViT's weights map onto it by name; `vitlab.weights.video` converts transformers' checkpoints. HF's MLP activation is
`gelu_fast` (the tanh approximation): the base variants use `act="gelu_tanh"` as it does.

Shapes: clips (B, T, C, H, W) -> tokens (B, 1 + T'*Hp*Wp, D) (model 1) or (B, 1 + T', D) (model 2) -> (B, classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vitlab.layers import resample_pos_embed
from vitlab.layers.patch_embed import TubeletEmbed
from vitlab.models.base import HALF, make_head, token_feature_info
from vitlab.models.video import Block, VideoModelBase, VideoModelConfig, drop_path_rates
from vitlab.registry import register_variants

MODELS = ("joint", "factorised")


@dataclass(frozen=True)
class ViViTConfig(VideoModelConfig):
    num_frames: int = 32  # HF's google/vivit-b-16x2-kinetics400 takes 32-frame clips
    tubelet_t: int = 2  # temporal extent t of a tubelet (sec. 3.2: 16x16x2 in the base models)
    model: str = "joint"  # "joint": model 1 (spatio-temporal attention); "factorised": model 2 (factorised encoder)
    # model 2 only: blocks of the temporal transformer Lt (depth is the spatial Ls; the paper's ViViT-B FE: 12 + 4)
    temporal_depth: int = 4
    act: str = "gelu_tanh"  # HF's ViViT config: hidden_act="gelu_fast"
    mean: tuple[float, ...] = HALF  # HF's VivitImageProcessor scales frames to [-1, 1]
    std: tuple[float, ...] = HALF

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if not (isinstance(self.tubelet_t, int) and self.tubelet_t >= 1) or self.num_frames % self.tubelet_t:
            raise ValueError(f"num_frames={self.num_frames} must be a multiple of tubelet_t={self.tubelet_t}")
        if self.model == "factorised" and self.temporal_depth < 1:
            raise ValueError(f"the factorised encoder needs temporal_depth >= 1, got {self.temporal_depth}")

    def test_overrides(self) -> dict:
        extra = {"temporal_depth": 1} if self.model == "factorised" else {}
        return {**super().test_overrides(), "num_frames": 2 * self.tubelet_t, **extra}


class ViViT(VideoModelBase):
    """ViViT model 1 (joint) or model 2 (factorised encoder), per `cfg.model`."""

    def __init__(self, cfg: ViViTConfig) -> None:
        super().__init__(cfg)
        D = cfg.embed_dim
        self.factorised = cfg.model == "factorised"
        self.patch_embed = TubeletEmbed(cfg.img_size, cfg.patch_size, cfg.tubelet_t, cfg.in_chans, D)
        self.t_tokens = cfg.num_frames // cfg.tubelet_t  # T'
        self.grid = self.patch_embed.grid_size  # Hp = Wp
        P = self.grid**2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        # model 1: one table over all space-time tokens; model 2: a spatial table per frame, a temporal one later
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (P if self.factorised else self.t_tokens * P), D))
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        depth = cfg.depth + (cfg.temporal_depth if self.factorised else 0)
        dpr = drop_path_rates(cfg.drop_path_rate, depth)
        self.blocks = nn.Sequential(*[Block(cfg, dpr[i]) for i in range(cfg.depth)])
        self.norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        if self.factorised:
            self.temporal_cls_token = nn.Parameter(torch.zeros(1, 1, D))
            self.temporal_pos_embed = nn.Parameter(torch.zeros(1, 1 + self.t_tokens, D))
            self.temporal_blocks = nn.Sequential(*[Block(cfg, dpr[cfg.depth + i]) for i in range(cfg.temporal_depth)])
            self.temporal_norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.init_weights()
        self.head = make_head(D, cfg.num_classes)

    def init_weights(self) -> None:
        for name, p in self.named_parameters():
            if name.endswith("pos_embed"):
                nn.init.trunc_normal_(p, std=0.02)
        self.apply(_init_linear)

    def _feature_info(self) -> list[dict]:
        depth = self.cfg.depth + (self.cfg.temporal_depth if self.factorised else 0)
        return token_feature_info(depth, self.num_features, self.cfg.patch_size)

    def _forward_trunk(self, x: torch.Tensor, take: list[int] | None = None, stop: int | None = None):
        B = x.shape[0]
        x = self.patch_embed(x)  # (B, T'*P, D)
        D = x.shape[-1]
        if self.factorised:
            x = x.reshape(B * self.t_tokens, self.grid**2, D)  # (B*T', P, D): each temporal index on its own
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        outs: list[torch.Tensor] = []
        blocks = list(self.blocks) + (list(self.temporal_blocks) if self.factorised else [])
        for i, blk in enumerate(blocks):
            if stop is not None and i > stop:
                break
            if self.factorised and i == self.cfg.depth:  # spatial -> temporal: each frame's class token
                x = self._temporal_tokens(self.norm(x)[:, 0].reshape(B, self.t_tokens, D))
            x = self._run(blk, x)
            if take is not None and i in take:
                outs.append(x)
        if stop is not None:
            return x, outs
        return (self.temporal_norm(x) if self.factorised else self.norm(x)), outs

    def _temporal_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T', D) frame embeddings -> (B, 1 + T', D) with the temporal class token and position table."""
        cls = self.temporal_cls_token.expand(frames.shape[0], -1, -1)
        return self.pos_drop(torch.cat([cls, frames], dim=1) + self.temporal_pos_embed)

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A spatial position table saved for another frame size resampled to this grid (model 2, and model 1's
        per-frame tables when T' matches)."""
        pe, own = state.get("pos_embed"), self.pos_embed
        if pe is None or pe.shape == own.shape or pe.shape[-1] != own.shape[-1]:
            return state
        T = 1 if self.factorised else self.t_tokens
        if (pe.shape[1] - 1) % T:
            return state
        per = pe[:, 1:].reshape(T, (pe.shape[1] - 1) // T, -1)  # (T', P_old, D)
        rows = [resample_pos_embed(per[t][None], (self.grid, self.grid), 0) for t in range(T)]
        return dict(state, pos_embed=torch.cat([pe[:, :1], *rows], dim=1))


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


# ----- registered variants -------------------------------------------------------------------------------------------
# HF's google/vivit-b-16x2-kinetics400: ViT-B width/depth, 16x16x2 tubelets, 32 frames of 224^2, Kinetics-400.
_B = dict(embed_dim=768, depth=12, num_heads=12, patch_size=16, tubelet_t=2, num_frames=32, num_classes=400)
# CPU configs for the generated moving-shape clips (8 frames of 16x16; `vitlab.data.moving`)
_MICRO = dict(img_size=16, num_frames=8, patch_size=4, tubelet_t=2, embed_dim=64, depth=4, num_heads=4,
              mlp_ratio=2.0, num_classes=6, act="gelu")  # fmt: skip

VIVIT_VARIANTS: dict[str, dict] = {
    "vivit_base_patch16x2_224": _B,
    # model 2 at ViViT-B FE's sizes (Ls = 12 spatial, Lt = 4 temporal blocks)
    "vivit_base_fe_patch16x2_224": {**_B, "model": "factorised", "temporal_depth": 4},
    "vivit_micro_patch4x2_16": _MICRO,
    "vivit_micro_fe_patch4x2_16": {**_MICRO, "model": "factorised", "depth": 3, "temporal_depth": 1},
}

register_variants(VIVIT_VARIANTS, family="vivit", config_cls=ViViTConfig, model_cls=ViViT, kind="video")
