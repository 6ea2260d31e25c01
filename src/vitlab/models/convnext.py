"""ConvNeXt: "A ConvNet for the 2020s" (Liu et al., arXiv 2201.03545).

Block (Fig. 4 / sec. 2.6): 7x7 depthwise conv -> LayerNorm -> Linear 4C -> GELU -> Linear C -> layer scale -> drop path,
plus the residual; stem 4x4/4 conv + LN ("patchify"); downsampling LN + 2x2/2 conv between stages; head: global
average pool -> LN -> Linear. Parameter names follow timm's (`stem`, `stages.N.downsample`, `stages.N.blocks.M`,
`head.norm`, `head.fc`); the Hugging Face converter renames to these.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.layers import DropPath, Mlp
from vitlab.models.base import ImageModelConfig, Intermediate, ModelBase, checkpointed, init_trunc_normal, make_head
from vitlab.registry import register_variants


@dataclass(frozen=True)
class ConvNeXtConfig(ImageModelConfig):
    depths: tuple[int, ...] = (3, 3, 9, 3)  # blocks per stage (T: 3/3/9/3, S/B/L: 3/3/27/3)
    dims: tuple[int, ...] = (96, 192, 384, 768)  # channels per stage
    patch_size: int = 4  # stem kernel = stride
    layer_scale_init: float = 1e-6  # initial per-channel scale of each residual branch (sec. 2.6)
    drop_path_rate: float = 0.0  # stochastic depth, linear over all blocks (paper: 0.1/0.4/0.5 for T/S/B)
    head_norm_eps: float = 1e-6  # the final LayerNorm's epsilon (HF configs: 1e-12)

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.depths) != len(self.dims):
            raise ValueError(f"depths {self.depths} and dims {self.dims} must have the same length")

    def test_overrides(self) -> dict:
        return dict(depths=(1,) * len(self.depths), img_size=64, drop_path_rate=0.0)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # (B, C, H, W)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, layer_scale_init: float, drop_path: float) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init)) if layer_scale_init > 0 else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_dw(x).permute(0, 2, 3, 1)  # (B, H, W, C): the MLP runs channels-last
        x = self.mlp(self.norm(x))
        if self.gamma is not None:
            x = x * self.gamma
        return shortcut + self.drop_path(x.permute(0, 3, 1, 2))


class ConvNeXtStage(nn.Module):
    def __init__(self, in_dim: int, dim: int, depth: int, layer_scale_init: float, dpr: list[float]) -> None:
        super().__init__()
        if in_dim != dim:
            self.downsample = nn.Sequential(LayerNorm2d(in_dim, eps=1e-6), nn.Conv2d(in_dim, dim, 2, stride=2))
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[ConvNeXtBlock(dim, layer_scale_init, dpr[i]) for i in range(depth)])

    def forward(self, x: torch.Tensor, grad_checkpointing: bool = False) -> torch.Tensor:
        x = self.downsample(x)
        for blk in self.blocks:
            x = checkpointed(blk, x) if grad_checkpointing and not torch.jit.is_scripting() else blk(x)
        return x


class Head(nn.Module):
    """Global average pool -> LayerNorm -> Linear (timm's NormMlpClassifierHead without hidden layer)."""

    def __init__(self, dim: int, num_classes: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fc = make_head(dim, num_classes)

    def forward(self, x: torch.Tensor, pre_logits: bool = False, pool: bool = True) -> torch.Tensor:
        if not pool:  # the normalised map (B, C, H, W), as timm's head without pooling
            return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.norm(x.mean(dim=(-2, -1)))  # (B, C)
        return x if pre_logits else self.fc(x)


class ConvNeXt(ModelBase):
    """Shapes: (B, C, H, W) -> features (B, dims[-1], H/32, W/32) -> logits (B, num_classes)."""

    head_name = "head.fc"
    first_conv = "stem.0"
    crop_pct = 0.95

    def __init__(self, cfg: ConvNeXtConfig) -> None:
        super().__init__(cfg, num_features=cfg.dims[-1])
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.in_chans, cfg.dims[0], cfg.patch_size, stride=cfg.patch_size),
            LayerNorm2d(cfg.dims[0], eps=1e-6),
        )
        total = sum(cfg.depths)
        rates = [cfg.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages, prev, start = [], cfg.dims[0], 0
        for depth, dim in zip(cfg.depths, cfg.dims, strict=True):
            stages.append(ConvNeXtStage(prev, dim, depth, cfg.layer_scale_init, rates[start : start + depth]))
            prev, start = dim, start + depth
        self.stages = nn.Sequential(*stages)
        self.apply(init_trunc_normal)
        self.head = Head(self.num_features, cfg.num_classes, cfg.head_norm_eps)

    def _forward_trunk(
        self, x: torch.Tensor, take: list[int] | None = None, stop: int | None = None
    ) -> tuple[torch.Tensor, list[Intermediate]]:
        x = self.stem(x)
        outs: list[Intermediate] = []
        for i, stage in enumerate(self.stages):
            if stop is None or i <= stop:  # (TorchScript has no `break` in a loop over modules)
                x = stage(x, self.grad_checkpointing)  # (B, C_i, H_i, W_i)
                if take is not None and i in take:
                    outs.append((x, None))
        return x, outs  # unnormalised: the LayerNorm comes after pooling, in the head

    def _feature_info(self) -> list[dict]:
        p = self.cfg.patch_size
        return [dict(num_chs=d, reduction=p * 2**i, module=f"stages.{i}") for i, d in enumerate(self.cfg.dims)]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits, pool=self.global_pool != "")


_VARIANTS = {
    "convnext_tiny": dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
    "convnext_small": dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)),
    "convnext_base": dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
    "convnext_large": dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536)),
    # 32x32 inputs (digits upsampled, CIFAR): a 2x2 stem keeps a 2x2 map after three downsamplings.
    "convnext_micro_32": dict(img_size=32, patch_size=2, depths=(1, 1, 2, 1), dims=(32, 64, 128, 256), num_classes=10),
}


# timm's default weights of the larger sizes (in22k fine-tunes) are evaluated at crop 0.875, the smaller at 0.95
_CROP = {"convnext_base": dict(crop_pct=0.875), "convnext_large": dict(crop_pct=0.875)}

register_variants(_VARIANTS, family="convnext", config_cls=ConvNeXtConfig, model_cls=ConvNeXt, pretrained_cfgs=_CROP)
