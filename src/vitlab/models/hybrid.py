"""Hybrid ViT (ViT paper, arXiv 2010.11929, sec. 3.1 "Hybrid Architecture"): ResNet feature map -> 1x1 patches -> ViT.

The backbone is BiT's ResNet-50 v2 layout without pre-activation (Kolesnikov et al., arXiv 1912.11370): stem
7x7/2 + max-pool 3x3/2, bottleneck stages (3, 4, 9) at 256/512/1024 channels (stride 16 in all), weight-standardised
convolutions (eps 1e-8) and GroupNorm(32). Convolutions and the pool pad "SAME" as in the JAX original (extra row and
column at the bottom/right). Parameter names follow timm's `vit_base_r50_s16_*` (`patch_embed.backbone.stem.conv`,
`patch_embed.backbone.stages.N.blocks.M`, `patch_embed.proj`), whose checkpoints load unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.fx import notrace
from vitlab.layers.patch_embed import check_patch_input
from vitlab.models.vit import VisionTransformer, ViTConfig
from vitlab.registry import register_variants


@notrace  # the padding depends on the input size
def same_pad(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow 'SAME' padding: output = ceil(input / stride); an odd total goes to the bottom/right."""
    H, W = x.shape[-2], x.shape[-1]
    ph = max((math.ceil(H / stride) - 1) * stride + kernel - H, 0)
    pw = max((math.ceil(W / stride) - 1) * stride + kernel - W, 0)
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=value)


class StdConv2dSame(nn.Conv2d):
    """Weight-standardised conv (Qiao et al., arXiv 1903.10520): each filter to zero mean, unit variance."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, eps: float = 1e-8) -> None:
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=0, bias=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.flatten(1)
        w = (w - w.mean(dim=1, keepdim=True)) / torch.sqrt(w.var(dim=1, unbiased=False, keepdim=True) + self.eps)
        x = same_pad(x, self.kernel_size[0], self.stride[0])
        return F.conv2d(x, w.view_as(self.weight), None, self.stride)


class GroupNormAct(nn.GroupNorm):
    def __init__(self, channels: int, act: bool = True) -> None:
        super().__init__(32, channels, eps=1e-5)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # nn.GroupNorm's forward, spelled out: TorchScript has no super()
        x = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.relu(x) if self.act else x


class DownsampleConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv = StdConv2dSame(in_ch, out_ch, 1, stride)
        self.norm = GroupNormAct(out_ch, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """Non-pre-activation bottleneck, stride on the 3x3 conv."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        mid = out_ch // 4
        self.downsample = DownsampleConv(in_ch, out_ch, stride) if (stride != 1 or in_ch != out_ch) else None
        self.conv1 = StdConv2dSame(in_ch, mid, 1)
        self.norm1 = GroupNormAct(mid)
        self.conv2 = StdConv2dSame(mid, mid, 3, stride)
        self.norm2 = GroupNormAct(mid)
        self.conv3 = StdConv2dSame(mid, out_ch, 1)
        self.norm3 = GroupNormAct(out_ch, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        return F.relu(self.norm3(self.conv3(x)) + shortcut)


class ResNetStage(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, depth: int, stride: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *[Bottleneck(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1) for i in range(depth)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class Stem(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = StdConv2dSame(in_ch, out_ch, 7, stride=2)
        self.norm = GroupNormAct(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        return F.max_pool2d(same_pad(x, 3, 2, value=float("-inf")), 3, stride=2)


class ResNetV2Backbone(nn.Module):
    def __init__(self, in_chans: int, layers: tuple[int, ...], stem_width: int = 64) -> None:
        super().__init__()
        self.stem = Stem(in_chans, stem_width)
        stages, in_ch = [], stem_width
        for i, depth in enumerate(layers):
            out_ch = 256 * 2**i
            stages.append(ResNetStage(in_ch, out_ch, depth, 1 if i == 0 else 2))
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.num_features = in_ch
        self.reduction = 4 * 2 ** (len(layers) - 1)  # stem /4, then /2 per later stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class HybridEmbed(nn.Module):
    """(B, C, H, W) -> ResNet map (B, 1024, H/16, W/16) -> 1x1 conv -> tokens (B, H/16 * W/16, D)."""

    def __init__(self, cfg: ViTConfig, layers: tuple[int, ...]) -> None:
        super().__init__()
        self.backbone = ResNetV2Backbone(cfg.in_chans, layers)
        if cfg.patch_size != self.backbone.reduction:
            raise ValueError(f"patch_size must equal the backbone's stride {self.backbone.reduction}")
        if cfg.img_size % cfg.patch_size:
            raise ValueError(f"img_size={cfg.img_size} is not a multiple of the backbone stride {cfg.patch_size}")
        self.proj = nn.Conv2d(self.backbone.num_features, cfg.embed_dim, 1)
        self.img_size, self.in_chans = cfg.img_size, cfg.in_chans
        self.grid_size = cfg.img_size // cfg.patch_size
        self.num_patches = self.grid_size**2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_patch_input(x, self.in_chans, 1, self.img_size)
        return self.proj(self.backbone(x)).flatten(2).transpose(1, 2)  # (B, N, D)


class HybridViT(VisionTransformer):
    first_conv = "patch_embed.backbone.stem.conv"
    backbone_layers: tuple[int, ...] = (3, 4, 9)

    def make_patch_embed(self, cfg: ViTConfig) -> nn.Module:
        return HybridEmbed(cfg, self.backbone_layers)


_R50 = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
_VARIANTS = {
    "vit_base_r50_s16_224": dict(**_R50, num_classes=0),  # timm's default: the in21k weights without a classifier
    "vit_base_r50_s16_384": dict(**_R50, img_size=384),
}


register_variants(_VARIANTS, family="vit", config_cls=ViTConfig, model_cls=HybridViT)
