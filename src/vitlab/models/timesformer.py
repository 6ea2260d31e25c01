"""TimeSformer: divided space-time attention (and the joint and axial schemes it is compared with).

Bertasius et al., "Is Space-Time Attention All You Need for Video Understanding?", arXiv 2102.05095.
- Sec. 3, eq. 2-5: each frame is cut into p x p patches (a 2-D patch embedding per frame), with a learned spatial
  position table and a learned temporal table (one row per frame) added, and a class token.
- Divided space-time attention (Fig. 1, eq. 6-7): per block, temporal attention first — each patch attends to the
  same patch in the other frames — then spatial attention within each frame, then the MLP. As in the reference
  code, the temporal branch passes through an extra linear layer (`temporal_fc`) before its residual, and the class
  token joins every frame's spatial attention, its T outputs averaged.
- Joint space-time attention (Fig. 1 "ST"): one attention over all T*Hp*Wp tokens.
- Axial attention (Fig. 1 "T+W+H"): temporal, then height (a patch attends along its column), then width (along its
  row, where the class token joins every row, averaged like the divided scheme's) — three one-axis attentions.

Differs from transformers' `TimesformerForVideoClassification` in layout only: tokens are kept time-major
(index t*Hp*Wp + p; HF orders them patch-major), which the attention and the class token do not see; names follow
timm's ViT (`blocks.N.norm1/attn/norm2/mlp`) plus `temporal_norm`, `temporal_attn`, `temporal_fc` (the reference's).
`vitlab.weights.video` converts transformers' checkpoints (divided and joint).

Shapes: clips (B, T, C, H, W) -> tokens (B, 1 + T*Hp*Wp, D) -> (B, classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vitlab.layers import Attention, DropPath, PatchEmbed, resample_pos_embed
from vitlab.models.base import make_head
from vitlab.models.video import Block, VideoModelBase, VideoModelConfig, drop_path_rates, make_mlp
from vitlab.registry import register_variants

ATTENTION_TYPES = ("divided_space_time", "joint_space_time", "axial")


@dataclass(frozen=True)
class TimeSformerConfig(VideoModelConfig):
    num_frames: int = 8  # the paper's default: 8 frames of 224^2 (sec. 4)
    attention_type: str = "divided_space_time"  # one of ATTENTION_TYPES (HF's names for the first two)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.attention_type not in ATTENTION_TYPES:
            raise ValueError(f"attention_type must be one of {', '.join(ATTENTION_TYPES)}, got {self.attention_type!r}")


class AxisAttention(nn.Module):
    """LN + self-attention over one axis of (B, T, Hp, Wp, D) tokens: the other axes become the batch."""

    def __init__(self, cfg: TimeSformerConfig, axis: int) -> None:
        super().__init__()
        self.axis = axis  # 1: time, 2: height, 3: width
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg.embed_dim, cfg.num_heads, cfg.qkv_bias, cfg.attn_drop_rate, cfg.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.movedim(self.axis, 3)  # (B, a, b, L, D): the attended axis last but one
        shape = x.shape
        y = self.attn(self.norm(x.reshape(-1, shape[3], shape[4])))  # (B*a*b, L, D)
        return y.reshape(shape).movedim(3, self.axis)


class DividedBlock(nn.Module):
    """Temporal attention, then spatial attention (class token in every frame), then the MLP (eq. 6-7).

    Shapes: (B, 1 + T*P, D) -> (B, 1 + T*P, D), tokens time-major.
    """

    def __init__(self, cfg: TimeSformerConfig, drop_path: float, num_patches: int) -> None:
        super().__init__()
        D = cfg.embed_dim
        self.T, self.P = cfg.num_frames, num_patches
        self.temporal_norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.temporal_attn = Attention(D, cfg.num_heads, cfg.qkv_bias, cfg.attn_drop_rate, cfg.drop_rate)
        self.temporal_fc = nn.Linear(D, D)
        self.norm1 = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.attn = Attention(D, cfg.num_heads, cfg.qkv_bias, cfg.attn_drop_rate, cfg.drop_rate)
        self.norm2 = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.mlp = make_mlp(cfg)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, D = x.shape
        T, P = self.T, self.P
        cls, xs = x[:, :1], x[:, 1:].reshape(B, T, P, D)
        # temporal: the same patch across frames
        xt = xs.transpose(1, 2).reshape(B * P, T, D)  # (B*P, T, D)
        res = self.drop_path(self.temporal_attn(self.temporal_norm(xt)))
        xs = xs + self.temporal_fc(res.reshape(B, P, T, D).transpose(1, 2))  # (B, T, P, D)
        # spatial: within each frame, the class token joining every frame
        frames = torch.cat([cls.expand(B, T, D).reshape(B * T, 1, D), xs.reshape(B * T, P, D)], dim=1)
        res = self.drop_path(self.attn(self.norm1(frames)))  # (B*T, 1 + P, D)
        cls = cls + res[:, :1].reshape(B, T, D).mean(dim=1, keepdim=True)  # the T class outputs averaged
        x = torch.cat([cls, (xs.reshape(B * T, P, D) + res[:, 1:]).reshape(B, T * P, D)], dim=1)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class AxialBlock(nn.Module):
    """Temporal, height and width attention in turn (the class token joins each row of the width step), then MLP."""

    def __init__(self, cfg: TimeSformerConfig, drop_path: float, grid: int) -> None:
        super().__init__()
        D = cfg.embed_dim
        self.T, self.grid = cfg.num_frames, grid
        self.temporal = AxisAttention(cfg, axis=1)
        self.temporal_fc = nn.Linear(D, D)  # as the divided block's (zero-initialised when inflated from a ViT)
        self.height = AxisAttention(cfg, axis=2)
        self.norm1 = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.attn = Attention(D, cfg.num_heads, cfg.qkv_bias, cfg.attn_drop_rate, cfg.drop_rate)
        self.norm2 = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.mlp = make_mlp(cfg)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, D = x.shape
        T, G = self.T, self.grid
        cls, xs = x[:, :1], x[:, 1:].reshape(B, T, G, G, D)  # (B, T, Hp, Wp, D)
        xs = xs + self.drop_path(self.temporal_fc(self.temporal(xs)))
        xs = xs + self.drop_path(self.height(xs))
        rows = torch.cat([cls.expand(B, T * G, D).reshape(B * T * G, 1, D), xs.reshape(B * T * G, G, D)], dim=1)
        res = self.drop_path(self.attn(self.norm1(rows)))  # (B*T*Hp, 1 + Wp, D)
        cls = cls + res[:, :1].reshape(B, T * G, D).mean(dim=1, keepdim=True)
        x = torch.cat([cls, (xs.reshape(B * T * G, G, D) + res[:, 1:]).reshape(B, T * G * G, D)], dim=1)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TimeSformer(VideoModelBase):
    def __init__(self, cfg: TimeSformerConfig) -> None:
        super().__init__(cfg)
        D = cfg.embed_dim
        self.attention_type = cfg.attention_type
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, D)  # per frame
        self.grid = self.patch_embed.grid_size
        P = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + P, D))  # spatial: shared by every frame
        self.time_embed = nn.Parameter(torch.zeros(1, cfg.num_frames, D))  # temporal: shared by every patch
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        dpr = drop_path_rates(cfg.drop_path_rate, cfg.depth)
        if cfg.attention_type == "divided_space_time":
            blocks = [DividedBlock(cfg, dpr[i], P) for i in range(cfg.depth)]
        elif cfg.attention_type == "axial":
            blocks = [AxialBlock(cfg, dpr[i], self.grid) for i in range(cfg.depth)]
        else:
            blocks = [Block(cfg, dpr[i]) for i in range(cfg.depth)]
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.init_weights()
        self.head = make_head(D, cfg.num_classes)

    def init_weights(self) -> None:
        for p in (self.cls_token, self.pos_embed):
            nn.init.trunc_normal_(p, std=0.02)  # the reference's and HF's: the time table starts at zero
        self.apply(_init_linear)
        # The reference zero-initialises temporal_fc in every block but the first: those blocks start as ViT blocks,
        # while the first block's temporal path carries a gradient to its temporal attention from the first step.
        for blk in list(self.blocks)[1:]:
            if hasattr(blk, "temporal_fc"):
                nn.init.zeros_(blk.temporal_fc.weight)
                nn.init.zeros_(blk.temporal_fc.bias)

    def _forward_trunk(self, x: torch.Tensor, take: list[int] | None = None, stop: int | None = None):
        B, T = x.shape[:2]
        x = self.patch_embed(x.flatten(0, 1)) + self.pos_embed[:, 1:]  # (B*T, P, D)
        x = x.reshape(B, T, x.shape[1], x.shape[2]) + self.time_embed[:, :, None]  # (B, T, P, D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)  # (B, 1, D)
        x = self.pos_drop(torch.cat([cls, x.flatten(1, 2)], dim=1))  # (B, 1 + T*P, D)
        outs: list[torch.Tensor] = []
        for i, blk in enumerate(self.blocks):
            if stop is not None and i > stop:
                break
            x = self._run(blk, x)
            if take is not None and i in take:
                outs.append(x)
        return (x if stop is not None else self.norm(x)), outs

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A spatial position table saved for another frame size resampled to this grid."""
        pe = state.get("pos_embed")
        if pe is not None and pe.shape != self.pos_embed.shape and pe.shape[-1] == self.pos_embed.shape[-1]:
            state = dict(state, pos_embed=resample_pos_embed(pe, (self.grid, self.grid), 1))
        return state


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


# ----- registered variants -------------------------------------------------------------------------------------------
# HF's facebook/timesformer-base-finetuned-k400: ViT-B/16 on 8 frames of 224^2, Kinetics-400 (the paper's default)
_B = dict(embed_dim=768, depth=12, num_heads=12, patch_size=16, num_frames=8, num_classes=400)
_MICRO = dict(img_size=16, num_frames=8, patch_size=4, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0,
              num_classes=6)  # fmt: skip

TIMESFORMER_VARIANTS: dict[str, dict] = {
    "timesformer_base_patch16_224": _B,
    "timesformer_base_joint_patch16_224": {**_B, "attention_type": "joint_space_time"},
    "timesformer_base_axial_patch16_224": {**_B, "attention_type": "axial"},
    "timesformer_micro_patch4_16": _MICRO,
    "timesformer_micro_joint_patch4_16": {**_MICRO, "attention_type": "joint_space_time"},
    "timesformer_micro_axial_patch4_16": {**_MICRO, "attention_type": "axial"},
}

register_variants(
    TIMESFORMER_VARIANTS, family="timesformer", config_cls=TimeSformerConfig, model_cls=TimeSformer, kind="video"
)
