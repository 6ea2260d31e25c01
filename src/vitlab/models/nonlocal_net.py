"""ResNet with non-local blocks: `resnet50_nonlocal`.

Wang, Girshick, Gupta & He, "Non-local Neural Networks", CVPR 2018, arXiv 1711.07971, Sec. 4.1: 5 non-local blocks
in ResNet-50, 2 in res3 and 3 in res4, each after every other residual block (in the official code,
facebookresearch/video-nonlocal-net, after blocks i with i % 2 == 1: blocks 1, 3 of res3 and 1, 3, 5 of res4). res3
and res4 are `layer2` and `layer3` here (timm's and torchvision's names, which this file keeps: the residual blocks
keep their names `layerN.M.*`, and each non-local block sits inside the residual block it follows as
`layerN.M.nonlocal_block`, so a plain ResNet-50 checkpoint fills every other weight).

How it differs from the paper's networks: the paper's ResNet-50 is the C2D video baseline (2-D convs over frames, the
non-local blocks over T×H×W); this is the image form, non-local over H×W (vitlab.layers.NonLocalBlock with dim=2;
its dim=3 form is the space-time block). Each block starts as the identity (BatchNorm scale 0), as in the paper, so
the network starts as its ResNet-50.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vitlab.layers.nonlocal_block import PAIRWISE, NonLocalBlock
from vitlab.models.resnet import Bottleneck, ResNet, ResNetConfig
from vitlab.registry import register_variants


@dataclass(frozen=True)
class NonLocalResNetConfig(ResNetConfig):
    nonlocal_stages: tuple[int, ...] = (2, 3)  # stages (layerN, 1-based) that get blocks: res3 and res4 (Sec. 4.1)
    nonlocal_every: int = 2  # after every other residual block of those stages: 2 + 3 = 5 blocks in ResNet-50
    pairwise: str = "embedded_gaussian"  # f of Sec. 3.2; the paper's default instantiation (Table 2a)
    sub_sample: bool = True  # 2×2 max-pool on φ and g (Sec. 3.3): 4x fewer pairs, as the paper's experiments

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block != "bottleneck":
            raise ValueError(f"non-local ResNets use bottleneck blocks, got block={self.block!r}")
        if not all(1 <= s <= len(self.layers) for s in self.nonlocal_stages):
            raise ValueError(f"nonlocal_stages must name stages 1..{len(self.layers)}, got {self.nonlocal_stages}")
        if self.nonlocal_every < 1:
            raise ValueError(f"nonlocal_every must be >= 1, got {self.nonlocal_every}")
        if self.pairwise not in PAIRWISE:
            raise ValueError(f"pairwise must be one of {', '.join(PAIRWISE)}, got {self.pairwise!r}")

    def test_overrides(self) -> dict:
        return dict(layers=(1, 2, 2, 1), img_size=64)  # one non-local block in each of layer2 and layer3

    def nonlocal_after(self, stage: int, index: int) -> bool:
        """Whether residual block `index` of stage `stage` (both 0-based) is followed by a non-local block."""
        return stage + 1 in self.nonlocal_stages and index % self.nonlocal_every == self.nonlocal_every - 1


class NonLocalBottleneck(Bottleneck):
    """A bottleneck block followed by a non-local block over its output: z = NL(Bottleneck(x))."""

    def __init__(
        self, in_ch: int, width: int, stride: int, first_dilation: int = 1, dilation: int = 1, *, pairwise: str,
        sub_sample: bool,
    ) -> None:  # fmt: skip
        super().__init__(in_ch, width, stride, first_dilation, dilation)
        self.nonlocal_block = NonLocalBlock(width * self.expansion, pairwise=pairwise, sub_sample=sub_sample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # Bottleneck's, spelled out: TorchScript has no super()
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        x = self.act(self.bn3(self.conv3(x)) + shortcut)
        return self.nonlocal_block(x)  # (B, 4·width, H, W)


class NonLocalResNet(ResNet):
    """Shapes: as ResNet, (B, C, H, W) -> features (B, 2048, H/32, W/32) -> logits (B, num_classes). ResNet's He
    initialisation reaches the non-local convs too; their BatchNorm scale stays 0, so each block is the identity."""

    def _make_block(
        self, block: type[nn.Module], stage: int, index: int, in_ch: int, width: int, stride: int,
        first_dilation: int = 1, dilation: int = 1,
    ):  # fmt: skip
        cfg: NonLocalResNetConfig = self.cfg
        if not cfg.nonlocal_after(stage, index):
            return block(in_ch, width, stride, first_dilation, dilation)
        return NonLocalBottleneck(
            in_ch, width, stride, first_dilation, dilation, pairwise=cfg.pairwise, sub_sample=cfg.sub_sample
        )


register_variants(
    {"resnet50_nonlocal": dict(block="bottleneck", layers=(3, 4, 6, 3))},
    family="nonlocal_net",
    config_cls=NonLocalResNetConfig,
    model_cls=NonLocalResNet,
)
