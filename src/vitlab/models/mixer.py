"""MLP-Mixer: "An all-MLP Architecture for Vision" (Tolstikhin et al., arXiv 2105.01601).

Per block (Fig. 1, eq. 1): x + token-mixing MLP along the token axis of LN(x), then x + channel-mixing MLP of LN(x);
LN, global average pooling, linear head. Parameter names follow timm (`stem.proj`, `blocks.N.mlp_tokens`,
`blocks.N.mlp_channels`), whose checkpoints (ported from the official JAX release) load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vitlab.layers import DropPath, Mlp, PatchEmbed
from vitlab.models.base import (
    HALF,
    ImageModelConfig,
    Intermediate,
    ModelBase,
    checkpointed,
    init_trunc_normal,
    make_head,
    token_feature_info,
)
from vitlab.registry import register_variants


@dataclass(frozen=True)
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

    def test_overrides(self) -> dict:
        return dict(depth=2, img_size=self.patch_size * 4, drop_path_rate=0.0)


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


class MlpMixer(ModelBase):
    """Shapes: (B, C, H, W) -> tokens (B, N, C) with N = Hp*Wp -> logits (B, num_classes)."""

    output_fmt = "NLC"
    first_conv = "stem.proj"
    fixed_input_size = True
    default_out_indices = 3

    def __init__(self, cfg: MixerConfig) -> None:
        super().__init__(cfg, num_features=cfg.embed_dim)
        self.stem = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        n = self.stem.num_patches
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.Sequential(*[MixerBlock(cfg, n, rates[i]) for i in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.apply(init_trunc_normal)
        self.head = make_head(cfg.embed_dim, cfg.num_classes)  # zero-initialised, as in the JAX code

    def _forward_trunk(
        self, x: torch.Tensor, take: list[int] | None = None, stop: int | None = None
    ) -> tuple[torch.Tensor, list[Intermediate]]:
        x = self.stem(x)
        grid = (self.stem.grid_size, self.stem.grid_size)
        outs: list[Intermediate] = []
        for i, blk in enumerate(self.blocks):
            if stop is None or i <= stop:  # (TorchScript has no `break` in a loop over modules)
                x = checkpointed(blk, x) if self.grad_checkpointing and not torch.jit.is_scripting() else blk(x)
                if take is not None and i in take:
                    outs.append((x, grid))
        return (x if stop is not None else self.norm(x)), outs  # (B, N, C); unnormalised when stopped early

    def _final_norm(self) -> nn.Module:
        return self.norm

    def _feature_info(self) -> list[dict]:
        return token_feature_info(len(self.blocks), self.num_features, self.stem.patch_size)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "":
            return x  # unpooled tokens (B, N, C)
        x = x.mean(dim=1)  # global average pooling over tokens -> (B, C)
        return x if pre_logits else self.head(x)


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
