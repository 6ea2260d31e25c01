"""Self-attention inside ResNets (seed 002, "augmenting convolution models with self-attention").

- `resnet18_sasa`, `resnet50_sasa`: every spatial (3×3) conv of the residual blocks replaced by stand-alone local
  self-attention (Ramachandran et al., arXiv 1906.05909: k = 7, 8 heads, relative embeddings; stride-2 blocks pool
  2×2 after the attention). The stem stays convolutional (the paper's "conv-stem" models), so do the 1×1 convs of a
  bottleneck and the projection shortcuts. `vitlab.layers.LocalSelfAttention`.
- `resnet18_aa`, `resnet50_aa`: the 3×3 convs of stages 2-4 attention-augmented (Bello et al., arXiv 1904.09925):
  the conv keeps F_out - d_v channels and global relative self-attention gives d_v more, d_k = κ·F_out and
  d_v = υ·F_out rounded up to a multiple of the heads, κ = 0.2, υ = 0.1, 8 heads. Stage 1 keeps plain convs here
  (the largest maps: N² logits per head). `vitlab.layers.AugmentedConv2d`.

The blocks are ResNet's (`models/resnet.py`) with the spatial layers swapped: they keep the names `conv1`/`conv2`
of the convs they replace, so every other parameter is named as in the plain ResNet, and the last BatchNorm of each
branch still starts at zero. Both layers expose their attention to `vitlab.explain.capture_attention` like every
attention layer of vitlab: SASA's windows on the full (N, N) grid of its input, AA's global maps as they are.
Only `output_stride` 32 is built (neither layer takes a dilation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from vitlab.layers.aa_conv import AugmentedConv2d
from vitlab.layers.local_attention import LocalSelfAttention
from vitlab.models.resnet import BasicBlock, ResNet, ResNetConfig
from vitlab.registry import register_variants


@dataclass(frozen=True)
class AttentionResNetConfig(ResNetConfig):
    attn_heads: int = 8  # heads of every attention layer (both papers' ResNets: 8)
    attn_stages: tuple[int, ...] = (1, 2, 3, 4)  # stages (layerN, 1-based) whose spatial convs change

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.output_stride != 32:
            raise ValueError(f"attention ResNets are built with output_stride 32 only, got {self.output_stride}")
        if not all(1 <= s <= len(self.layers) for s in self.attn_stages):
            raise ValueError(f"attn_stages must name stages 1..{len(self.layers)}, got {self.attn_stages}")
        if self.attn_heads < 1:
            raise ValueError(f"attn_heads must be >= 1, got {self.attn_heads}")

    def stage_map_size(self, stage: int) -> int:
        """Side of stage `stage`'s (0-based) output map at img_size: stem /2, max-pool /2, then /2 per later stage."""
        side = math.ceil(math.ceil(self.img_size / 2) / 2)
        return math.ceil(side / 2**stage)


@dataclass(frozen=True)
class SASAResNetConfig(AttentionResNetConfig):
    attn_kernel: int = 7  # spatial extent k of the local windows (Ramachandran et al.: 7)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.attn_kernel < 1 or self.attn_kernel % 2 == 0:
            raise ValueError(f"attn_kernel must be odd and >= 1, got {self.attn_kernel}")


@dataclass(frozen=True)
class AAResNetConfig(AttentionResNetConfig):
    attn_stages: tuple[int, ...] = (2, 3, 4)  # stage 1's maps are the largest: its convs stay plain
    key_ratio: float = 0.2  # κ = d_k / F_out
    value_ratio: float = 0.1  # υ = d_v / F_out (κ = 2υ)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.key_ratio > 0 and 0 < self.value_ratio < 1):
            raise ValueError(f"key_ratio must be > 0 and value_ratio in (0, 1), got {self.key_ratio}, "
                             f"{self.value_ratio}")  # fmt: skip

    def dims(self, out_chans: int) -> tuple[int, int]:
        """(d_k, d_v) for a conv of `out_chans` outputs: the ratios' widths rounded up to a multiple of the heads."""
        h = self.attn_heads
        return h * math.ceil(self.key_ratio * out_chans / h), h * math.ceil(self.value_ratio * out_chans / h)


class _AttentionResNet(ResNet):
    """A ResNet whose blocks in `attn_stages` get their spatial convs replaced by `_spatial`."""

    def _make_block(
        self, block: type[nn.Module], stage: int, index: int, in_ch: int, width: int, stride: int,
        first_dilation: int = 1, dilation: int = 1,
    ):  # fmt: skip
        m = block(in_ch, width, stride, first_dilation, dilation)
        if stage + 1 not in self.cfg.attn_stages:
            return m
        if isinstance(m, BasicBlock):
            m.conv1 = self._spatial(in_ch, width, stride, stage)
            m.conv2 = self._spatial(width, width, 1, stage)
        else:
            m.conv2 = self._spatial(width, width, stride, stage)
        return m

    def _spatial(self, in_ch: int, out_ch: int, stride: int, stage: int) -> nn.Module:
        raise NotImplementedError


class SASAResNet(_AttentionResNet):
    """Shapes: as ResNet, (B, C, H, W) -> features (B, 512 x expansion, H/32, W/32) -> logits (B, num_classes)."""

    def _spatial(self, in_ch: int, out_ch: int, stride: int, stage: int) -> nn.Module:
        cfg: SASAResNetConfig = self.cfg
        return LocalSelfAttention(in_ch, out_ch, cfg.attn_kernel, cfg.attn_heads, stride)


class AAResNet(_AttentionResNet):
    """Shapes: as ResNet, (B, C, H, W) -> features (B, 512 x expansion, H/32, W/32) -> logits (B, num_classes)."""

    def _spatial(self, in_ch: int, out_ch: int, stride: int, stage: int) -> nn.Module:
        cfg: AAResNetConfig = self.cfg
        dk, dv = cfg.dims(out_ch)
        return AugmentedConv2d(in_ch, out_ch, 3, stride, dk, dv, cfg.attn_heads, cfg.stage_map_size(stage))


register_variants(
    {
        "resnet18_sasa": dict(block="basic", layers=(2, 2, 2, 2)),
        "resnet50_sasa": dict(block="bottleneck", layers=(3, 4, 6, 3)),
    },
    family="resnet_sasa",
    config_cls=SASAResNetConfig,
    model_cls=SASAResNet,
)
register_variants(
    {
        "resnet18_aa": dict(block="basic", layers=(2, 2, 2, 2)),
        "resnet50_aa": dict(block="bottleneck", layers=(3, 4, 6, 3)),
    },
    family="resnet_aa",
    config_cls=AAResNetConfig,
    model_cls=AAResNet,
)
