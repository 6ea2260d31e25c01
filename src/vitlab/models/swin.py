"""Swin Transformer: "Hierarchical Vision Transformer using Shifted Windows" (Liu et al., arXiv 2103.14030).

Self-attention inside non-overlapping W x W windows with a learned relative position bias ((2W-1)^2 x heads table,
sec. 3.2); every second block shifts the windows by W//2 (cyclic roll) and masks pairs that come from different
regions of the rolled map (-100 before the softmax); patch merging between stages concatenates 2x2 neighbours
-> LN(4C) -> nn.Linear(4C -> 2C, no bias). Where a stage's map is not larger than the window, the window shrinks to the
map and the shift is dropped (as the official code does).

Differences from the official code: activations stay channels-last (B, H, W, C) between blocks, as in timm, whose
parameter names (`layers.N.downsample` at the start of stage N, `layers.N.blocks.M.attn.qkv`) are used; maps that
are not a multiple of the window are zero-padded, as in Hugging Face's implementation. Windows run through SDPA
with the bias (+ mask) as an additive attention mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vitlab.layers import DropPath, Mlp, attend
from vitlab.models.base import ImageModelConfig, Intermediate, ModelBase, checkpointed, init_trunc_normal, make_head
from vitlab.ops.windows import (
    crop_map,
    pad_to_windows,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from vitlab.registry import register_variants


@dataclass(frozen=True)
class SwinConfig(ImageModelConfig):
    patch_size: int = 4  # patch embedding kernel = stride (sec. 3.1: 4x4 patches of 48 features)
    embed_dim: int = 96  # C, the width of stage 1; doubled by each patch merging
    depths: tuple[int, ...] = (2, 2, 6, 2)  # blocks per stage (T: 2/2/6/2; S, B, L: 2/2/18/2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)  # heads per stage (head dim 32)
    window_size: int = 7  # W: tokens per window side (M in the paper)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.1  # stochastic depth, linear over all blocks (paper: 0.2 / 0.3 / 0.5 for T / S / B)
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} must have the same length")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size={self.img_size} is not a multiple of patch_size={self.patch_size}")

    def test_overrides(self) -> dict:
        # 32 patches a side: the first stages keep the variant's shifted windows, the last ones shrink them to the map.
        return dict(depths=(2,) + (1,) * (len(self.depths) - 1), img_size=self.patch_size * 32, drop_path_rate=0.0)


class WindowAttention(nn.Module):
    """Shapes: windows (B*nW, N, C) with N = W*W -> (B*nW, N, C); probabilities (B*nW, H, N, N) when captured.

    `vitlab.explain.swin_attention_maps` stitches the captured window maps back onto the stage's token grid.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.window_size = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.capture_attn = False
        self.attn_probs: torch.Tensor | None = None
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_bias(self) -> torch.Tensor:
        N = self.window_size * self.window_size  # (not **: an int power is a float in TorchScript)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # (N*N, H)
        return bias.view(N, N, -1).permute(2, 0, 1)  # (H, N, N)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B_, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_bias()[None]  # (1, H, N, N)
        if mask is not None:
            nW = mask.shape[0]
            bias = (bias[None] + mask[None, :, None]).reshape(-1, nW, self.num_heads, N, N)  # (1, nW, H, N, N)
            bias = bias.expand(B_ // nW, -1, -1, -1, -1).reshape(B_, self.num_heads, N, N)
        # attend() keeps the explicit softmax for CPU training with this learnable bias (SDPA's fused CPU kernel
        # cannot return its gradient and falls back to a slower composite); GPUs and inference keep SDPA.
        x, probs = attend(q, k, v, bias=bias, scale=self.scale, capture=self.capture_attn)  # (B*nW, H, N, Dh)
        if not torch.jit.is_scripting() and probs is not None:  # capture is for eager models (vitlab.explain)
            self.attn_probs = probs.detach()  # (B*nW, H, N, N)
        return self.proj(x.transpose(1, 2).reshape(B_, N, C))


class SwinBlock(nn.Module):
    """Shapes: (B, H, W, C) -> (B, H, W, C)."""

    def __init__(self, cfg: SwinConfig, dim: int, heads: int, resolution: int, shift: bool, drop_path: float) -> None:
        super().__init__()
        # The small-feature-map rule: no larger window than the map, and then no shift.
        self.window_size = min(cfg.window_size, resolution)
        self.shift_size = self.window_size // 2 if shift and resolution > cfg.window_size else 0
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = WindowAttention(dim, heads, self.window_size, cfg.qkv_bias)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))
        self.drop_path2 = DropPath(drop_path)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[1], x.shape[2]
        ws, s = self.window_size, self.shift_size
        x = pad_to_windows(x, ws)  # (B, Hp, Wp, C)
        Hp, Wp = x.shape[1], x.shape[2]
        mask: torch.Tensor | None = None
        if s > 0:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
            mask = shifted_window_mask(Hp, Wp, ws, s, device=x.device, dtype=x.dtype)  # (nW, N, N)
        windows = self.attn(window_partition(x, ws), mask)  # (B*nW, N, C)
        x = window_reverse(windows, ws, Hp, Wp)  # (B, Hp, Wp, C)
        if s > 0:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        return crop_map(x, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self._attend(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """(B, H, W, C) -> (B, H/2, W/2, 2C): concat 2x2 neighbours [(0,0), (1,0), (0,1), (1,1)] -> LN -> Linear."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_to_windows(x, 2)  # an odd side gets a zero row/column
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))  # (B, H/2, W/2, 2C)


class SwinStage(nn.Module):
    def __init__(self, cfg: SwinConfig, index: int, dim: int, resolution: int, dpr: list[float]) -> None:
        super().__init__()
        self.downsample = PatchMerging(dim // 2, cfg.norm_eps) if index > 0 else nn.Identity()
        heads = cfg.num_heads[index]
        self.blocks = nn.Sequential(
            *[SwinBlock(cfg, dim, heads, resolution, shift=j % 2 == 1, drop_path=dpr[j]) for j in range(len(dpr))]
        )

    def forward(self, x: torch.Tensor, grad_checkpointing: bool = False) -> torch.Tensor:
        x = self.downsample(x)
        for blk in self.blocks:
            x = checkpointed(blk, x) if grad_checkpointing and not torch.jit.is_scripting() else blk(x)
        return x


class SwinPatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, H/p, W/p, D), normalised."""

    def __init__(self, cfg: SwinConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SwinTransformer(ModelBase):
    """Shapes: (B, C, H, W) -> features (B, H/32, W/32, 8C) channels-last -> logits (B, num_classes)."""

    head_name = "head.fc"
    output_fmt = "NHWC"
    first_conv = "patch_embed.proj"
    fixed_input_size = True
    crop_pct = 0.9

    def __init__(self, cfg: SwinConfig) -> None:
        super().__init__(cfg, num_features=cfg.embed_dim * 2 ** (len(cfg.depths) - 1))
        self.patch_embed = SwinPatchEmbed(cfg)
        total = sum(cfg.depths)
        rates = [cfg.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        res, start, stages = cfg.img_size // cfg.patch_size, 0, []
        for i, depth in enumerate(cfg.depths):
            if i > 0:
                res = (res + 1) // 2
            stages.append(SwinStage(cfg, i, cfg.embed_dim * 2**i, res, rates[start : start + depth]))
            start += depth
        self.layers = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(self.num_features, eps=cfg.norm_eps)
        self.apply(_init)
        self.head = nn.Module()
        self.head.fc = make_head(self.num_features, cfg.num_classes)

    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")}

    def attention_layers(self) -> list[WindowAttention]:
        return [blk.attn for stage in self.layers for blk in stage.blocks]

    def _forward_trunk(
        self, x: torch.Tensor, take: list[int] | None = None, stop: int | None = None
    ) -> tuple[torch.Tensor, list[Intermediate]]:
        x = self.patch_embed(x)
        outs: list[Intermediate] = []
        for i, stage in enumerate(self.layers):
            if stop is None or i <= stop:  # (TorchScript has no `break` in a loop over modules)
                x = stage(x, self.grad_checkpointing)  # (B, H_i, W_i, C_i)
                if take is not None and i in take:
                    outs.append((x.flatten(1, 2), (x.shape[1], x.shape[2])))  # tokens (B, H_i*W_i, C_i)
        return (x if stop is not None else self.norm(x)), outs  # (B, H', W', C'); unnormalised when stopped early

    def _final_norm(self) -> nn.Module:
        return self.norm

    def _feature_info(self) -> list[dict]:
        c, p = self.cfg.embed_dim, self.cfg.patch_size
        return [dict(num_chs=c * 2**i, reduction=p * 2**i, module=f"layers.{i}") for i in range(len(self.layers))]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "":
            return x  # unpooled (B, H, W, C)
        x = x.mean(dim=(1, 2))  # global average pool over the token grid -> (B, C)
        return x if pre_logits else self.head.fc(x)


def _init(m: nn.Module) -> None:
    init_trunc_normal(m)
    if isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


_T = dict(embed_dim=96, num_heads=(3, 6, 12, 24))
_B = dict(embed_dim=128, num_heads=(4, 8, 16, 32))
_VARIANTS = {
    "swin_tiny_patch4_window7_224": dict(**_T, depths=(2, 2, 6, 2)),
    "swin_small_patch4_window7_224": dict(**_T, depths=(2, 2, 18, 2)),
    "swin_base_patch4_window7_224": dict(**_B, depths=(2, 2, 18, 2)),
    "swin_base_patch4_window12_384": dict(**_B, depths=(2, 2, 18, 2), window_size=12, img_size=384),
    "swin_large_patch4_window7_224": dict(embed_dim=192, num_heads=(6, 12, 24, 48), depths=(2, 2, 18, 2)),
    # 32x32 inputs (digits upsampled, CIFAR): maps 8/4/2; the second equals the window (no shift), the third is
    # smaller (the window shrinks to 2).
    "swin_micro_patch4_window4_32": dict(
        img_size=32,
        patch_size=4,
        embed_dim=64,
        depths=(2, 2, 2),
        num_heads=(2, 4, 8),
        window_size=4,
        num_classes=10,
        drop_path_rate=0.0,
    ),
}


register_variants(_VARIANTS, family="swin", config_cls=SwinConfig, model_cls=SwinTransformer)
