"""MLP-Mixer: "An all-MLP Architecture for Vision" (Tolstikhin et al., arXiv 2105.01601).

Per block (Fig. 1, eq. 1): x + token-mixing MLP along the token axis of LN(x), then x + channel-mixing MLP of LN(x);
LN, global average pooling, linear head. Parameter names follow timm (`stem.proj`, `blocks.N.mlp_tokens`,
`blocks.N.mlp_channels`), whose checkpoints (ported from the official JAX release) load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from vitlab.layers import DropPath, Mlp, PatchEmbed
from vitlab.models.base import HALF, ClassifierMixin, ImageModelConfig, init_trunc_normal, make_head, stage_indices
from vitlab.registry import register_variants


@dataclass
class MixerConfig(ImageModelConfig):
    patch_size: int = 16
    embed_dim: int = 768  # C, channels per token
    depth: int = 12  # number of Mixer layers
    tokens_mlp_dim: int = 384  # D_S, hidden width of the token-mixing MLP (Table 1)
    channels_mlp_dim: int = 3072  # D_C, hidden width of the channel-mixing MLP
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-6
    mean: tuple[float, ...] = HALF  # the JAX release normalises to [-1, 1]
    std: tuple[float, ...] = HALF


class MixerBlock(nn.Module):
    """Shapes: (B, N, C) -> (B, N, C)."""

    def __init__(self, cfg: MixerConfig, num_tokens: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp_tokens = Mlp(num_tokens, cfg.tokens_mlp_dim)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp_channels = Mlp(cfg.embed_dim, cfg.channels_mlp_dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2))  # mixes along N
        return x + self.drop_path(self.mlp_channels(self.norm2(x)))  # mixes along C


class MlpMixer(ClassifierMixin, nn.Module):
    def __init__(self, cfg: MixerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.num_features = cfg.embed_dim
        self.stem = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        n = self.stem.num_patches
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.Sequential(*[MixerBlock(cfg, n, rates[i]) for i in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.apply(init_trunc_normal)
        self.head = make_head(cfg.embed_dim, cfg.num_classes)  # zero-initialised, as in the JAX code
        self.grad_checkpointing = False

    def _blocks(self, x: torch.Tensor, take: set[int] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        for i, blk in enumerate(self.blocks):
            x = checkpoint(blk, x, use_reentrant=False) if self.grad_checkpointing and x.requires_grad else blk(x)
            if take is not None and i in take:
                feats.append(x)
        return x, feats

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self._blocks(self.stem(x))[0])  # (B, N, C)

    def forward_intermediates(self, x, indices=None, norm: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):  # fmt: skip
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        x, feats = self._blocks(self.stem(x), stage_indices(indices, len(self.blocks)))
        g = self.stem.grid_size
        if norm:
            feats = [self.norm(f) for f in feats]
        if output_fmt == "NCHW":
            feats = [f.transpose(1, 2).reshape(f.shape[0], -1, g, g) for f in feats]  # (B, C, Hp, Wp)
        return feats if intermediates_only else (self.norm(x), feats)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=1)  # global average pooling over tokens -> (B, C)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_VARIANTS = {
    "mixer_b16_224": dict(embed_dim=768, depth=12, tokens_mlp_dim=384, channels_mlp_dim=3072),
    "mixer_l16_224": dict(embed_dim=1024, depth=24, tokens_mlp_dim=512, channels_mlp_dim=4096),
    "mixer_b32_224": dict(patch_size=32, embed_dim=768, depth=12, tokens_mlp_dim=384, channels_mlp_dim=3072),
    "mixer_micro_patch4_32": dict(
        img_size=32,
        patch_size=4,
        in_chans=1,
        num_classes=10,
        embed_dim=128,
        depth=4,
        tokens_mlp_dim=64,
        channels_mlp_dim=256,
    ),
}


register_variants(_VARIANTS, family="mixer", config_cls=MixerConfig, model_cls=MlpMixer)
