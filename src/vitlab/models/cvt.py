"""CvT: "Introducing Convolutions to Vision Transformers" (Wu et al., arXiv 2103.15808).

Three stages, each: convolutional token embedding (overlapping strided conv + LN; kernel 7/3/3, stride 4/2/2) and
blocks whose q/k/v come from a convolutional projection (depthwise 3x3 conv + BatchNorm; stride 1 for q, 2 for k/v,
sec. 3.2) followed by linear projections. No position embedding; the class token joins in the last stage only and
bypasses the convolutions. Head: LN on the class token -> Linear.

Parameter names follow the official repository (`stages.N` for its `stageN`, `attn.conv_proj_q.conv/bn`,
`attn.proj_q`). Like the official code (and HF's port), attention scales by 1/sqrt(embed_dim), not by the head
dimension; kept for weight compatibility.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vitlab.layers import DropPath, Mlp, attend
from vitlab.models.base import (
    ImageModelConfig,
    Intermediate,
    ModelBase,
    checkpointed,
    init_trunc_normal,
    make_head,
    tokens_to_map,
)
from vitlab.registry import register_variants


@dataclass(frozen=True)
class CvTConfig(ImageModelConfig):
    embed_dims: tuple[int, ...] = (64, 192, 384)  # channels per stage
    depths: tuple[int, ...] = (1, 2, 10)  # blocks per stage (CvT-13; CvT-21: 1/4/16)
    num_heads: tuple[int, ...] = (1, 3, 6)
    patch_sizes: tuple[int, ...] = (7, 3, 3)  # token-embedding conv kernel per stage
    patch_strides: tuple[int, ...] = (4, 2, 2)
    patch_paddings: tuple[int, ...] = (2, 1, 1)
    kernel_qkv: int = 3  # depthwise projection kernel
    stride_kv: int = 2  # k/v are subsampled 4x in tokens (sec. 3.2, "squeezed" projection)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.1  # stochastic depth, last stage only (the official CvT-13 config: 0 / 0 / 0.1)
    norm_eps: float = 1e-5
    global_pool: str = "token"  # the head reads the class token of the last stage

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("embed_dims", "num_heads", "patch_sizes", "patch_strides", "patch_paddings"):
            if len(getattr(self, name)) != len(self.depths):
                raise ValueError(f"{name}={getattr(self, name)} must have one entry per stage ({len(self.depths)})")

    def test_overrides(self) -> dict:
        return dict(depths=(1,) * len(self.depths), img_size=64, drop_path_rate=0.0)


class ConvProjection(nn.Module):
    """Depthwise conv + BatchNorm on the token map; (B, C, H, W) -> tokens (B, H'W', C)."""

    def __init__(self, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel, stride=stride, padding=kernel // 2, groups=dim, bias=False)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)).flatten(2).transpose(1, 2)


class ConvAttention(nn.Module):
    """Shapes: tokens (B, [1 +] H*W, C) on an (H, W) map -> same; probabilities (B, heads, Nq, Nkv) when captured.

    Queries live on the (H, W) map, keys and values on the map subsampled by `stride_kv` (plus the class token in the
    last stage), so Nq != Nkv: the probabilities are not a square token-to-token matrix.
    """

    def __init__(self, dim: int, num_heads: int, cfg: CvTConfig, with_cls: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = dim**-0.5  # the official code's scale (see module docstring)
        self.with_cls = with_cls
        self.conv_proj_q = ConvProjection(dim, cfg.kernel_qkv, 1)
        self.conv_proj_k = ConvProjection(dim, cfg.kernel_qkv, cfg.stride_kv)
        self.conv_proj_v = ConvProjection(dim, cfg.kernel_qkv, cfg.stride_kv)
        self.proj_q = nn.Linear(dim, dim, bias=cfg.qkv_bias)
        self.proj_k = nn.Linear(dim, dim, bias=cfg.qkv_bias)
        self.proj_v = nn.Linear(dim, dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.capture_attn = False
        self.attn_probs: torch.Tensor | None = None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        return x.view(B, N, self.num_heads, C // self.num_heads).transpose(1, 2)  # (B, heads, N, Dh)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        B, N, C = x.shape
        cls: torch.Tensor | None = None
        if self.with_cls:
            cls, x = x[:, :1], x[:, 1:]
        feat = x.transpose(1, 2).reshape(B, C, hw[0], hw[1])  # (B, C, H, W)
        q, k, v = self.conv_proj_q(feat), self.conv_proj_k(feat), self.conv_proj_v(feat)
        if cls is not None:  # the class token skips the convolutions
            q, k, v = torch.cat([cls, q], dim=1), torch.cat([cls, k], dim=1), torch.cat([cls, v], dim=1)
        q, k, v = self._heads(self.proj_q(q)), self._heads(self.proj_k(k)), self._heads(self.proj_v(v))
        out, probs = attend(q, k, v, scale=self.scale, capture=self.capture_attn)  # (B, heads, Nq, Dh)
        if not torch.jit.is_scripting() and probs is not None:  # capture is for eager models (vitlab.explain)
            self.attn_probs = probs.detach()  # (B, heads, Nq, Nkv)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class CvTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, cfg: CvTConfig, with_cls: bool, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = ConvAttention(dim, heads, cfg, with_cls)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConvEmbed(nn.Module):
    """(B, C_in, H, W) -> (B, C, H', W') through an overlapping strided conv, then LN over channels."""

    def __init__(self, in_ch: int, dim: int, kernel: int, stride: int, padding: int, eps: float) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, kernel, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class CvTStage(nn.Module):
    def __init__(self, cfg: CvTConfig, i: int, in_ch: int, with_cls: bool, dpr: list[float]) -> None:
        super().__init__()
        dim = cfg.embed_dims[i]
        self.patch_embed = ConvEmbed(
            in_ch, dim, cfg.patch_sizes[i], cfg.patch_strides[i], cfg.patch_paddings[i], cfg.norm_eps
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if with_cls else None
        self.blocks = nn.ModuleList([CvTBlock(dim, cfg.num_heads[i], cfg, with_cls, r) for r in dpr])

    def forward(self, x: torch.Tensor, grad_checkpointing: bool = False) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C_in, H, W) -> (tokens (B, [1 +] H'W', C), class token first where the stage has one; grid (H', W'))."""
        x = self.patch_embed(x)
        B, C, H, W = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, H'W', C)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)
        for blk in self.blocks:
            x = checkpointed(blk, x, (H, W)) if grad_checkpointing and not torch.jit.is_scripting() else blk(x, (H, W))
        return x, (H, W)


class CvT(ModelBase):
    """Shapes: (B, C, H, W) -> features: the normalised class token (B, 1, D) -> logits."""

    global_pools = ("token",)
    output_fmt = "NLC"
    first_conv = "stages.0.patch_embed.proj"

    def __init__(self, cfg: CvTConfig) -> None:
        super().__init__(cfg, num_features=cfg.embed_dims[-1])
        n = len(cfg.depths)
        stages, in_ch = [], cfg.in_chans
        for i in range(n):
            rates = [cfg.drop_path_rate * j / max(cfg.depths[i] - 1, 1) for j in range(cfg.depths[i])]
            stages.append(CvTStage(cfg, i, in_ch, with_cls=i == n - 1, dpr=rates if i == n - 1 else [0.0] * len(rates)))
            in_ch = cfg.embed_dims[i]
        self.stages = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(self.num_features, eps=cfg.norm_eps)
        self.apply(init_trunc_normal)
        nn.init.trunc_normal_(self.stages[-1].cls_token, std=0.02)
        self.head = make_head(self.num_features, cfg.num_classes)

    def no_weight_decay(self) -> set[str]:
        return {f"stages.{len(self.stages) - 1}.cls_token"}

    def attention_layers(self) -> list[ConvAttention]:
        return [blk.attn for s in self.stages for blk in s.blocks]

    def _forward_trunk(
        self, x: torch.Tensor, take: list[int] | None = None, stop: int | None = None
    ) -> tuple[torch.Tensor, list[Intermediate]]:
        outs: list[Intermediate] = []
        tokens = x  # (bound before the loop for TorchScript; every model has a stage)
        for i, stage in enumerate(self.stages):
            if stop is None or i <= stop:  # (TorchScript has no `break` in a loop over modules)
                tokens, grid = stage(x, self.grad_checkpointing)  # (B, [1 +] H_i*W_i, C_i)
                if take is not None and i in take:
                    outs.append((tokens, grid))
                x = tokens_to_map(tokens, grid)  # (B, C_i, H_i, W_i), the next stage's input
        if stop is not None:
            return tokens, outs  # stopped early: no class token yet
        return self.norm(tokens[:, :1]), outs  # (B, 1, D): the class token (last stage), normalised

    def _final_norm(self) -> nn.Module:
        return self.norm

    def _feature_info(self) -> list[dict]:
        info, r = [], 1
        for i, (c, s) in enumerate(zip(self.cfg.embed_dims, self.cfg.patch_strides, strict=True)):
            r *= s
            info.append(dict(num_chs=c, reduction=r, module=f"stages.{i}"))
        return info

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "":
            return x  # the class token unpooled (B, 1, D)
        x = x.mean(dim=1)  # (B, D): the single class token
        return x if pre_logits else self.head(x)


_VARIANTS = {
    "cvt_13_224": dict(depths=(1, 2, 10)),
    "cvt_21_224": dict(depths=(1, 4, 16)),
    "cvt_13_384": dict(depths=(1, 2, 10), img_size=384),
    "cvt_micro_32": dict(
        img_size=32,
        in_chans=1,
        num_classes=10,
        embed_dims=(32, 64, 128),
        depths=(1, 1, 2),
        num_heads=(1, 2, 4),
        patch_sizes=(3, 3, 3),
        patch_strides=(2, 2, 2),
        patch_paddings=(1, 1, 1),
    ),
}


register_variants(_VARIANTS, family="cvt", config_cls=CvTConfig, model_cls=CvT)
