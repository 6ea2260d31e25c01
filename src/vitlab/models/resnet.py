"""CNN baselines of the lectures' first part: LeNet-5, AlexNet and ResNet.

- LeNet-5: "Gradient-based learning applied to document recognition" (LeCun et al., 1998): conv 5x5 (6) -> avg-pool ->
  conv 5x5 (16) -> avg-pool -> 120 -> 84 -> classes, tanh. C3 is fully connected to S2 here (the paper's sparse
  connection table saved compute in 1998) and the RBF output layer is a linear one, as in every modern rendition.
- AlexNet: Krizhevsky et al., NeurIPS 2012, in its single-GPU form ("One weird trick", arXiv 1404.5997; torchvision's
  layout: 64/192/384/256/256 filters, 61.1M parameters).
- ResNet: "Deep Residual Learning" (He et al., arXiv 1512.03385), v1.5 (stride on the 3x3 conv of a bottleneck, as
  timm, torchvision and HF). Parameter names follow timm/torchvision (`conv1`, `bn1`, `layerN.M`, `fc`). The last
  BatchNorm of each residual branch starts at zero (Goyal et al., arXiv 1706.02677), so every block starts as identity.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from vitlab.models.base import HALF, ImageModelConfig, Intermediate, ModelBase, checkpointed, make_head
from vitlab.registry import register_model, register_variants


# ----- ResNet ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResNetConfig(ImageModelConfig):
    block: str = "bottleneck"  # "basic" (two 3x3 convs; ResNet-18/34) or "bottleneck" (1x1-3x3-1x1, expansion 4)
    layers: tuple[int, ...] = (3, 4, 6, 3)  # blocks per stage (ResNet-50)
    stem_width: int = 64  # channels of the 7x7/2 stem conv
    widths: tuple[int, ...] = (64, 128, 256, 512)  # inner width per stage; output = width x expansion
    zero_init_last: bool = True  # start each residual branch at zero (last BN gamma = 0)
    # 32 as the paper; 16 or 8 trade the last stages' strides for dilation (timm's `output_stride`; DETR-DC5 is 16)
    output_stride: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {self.block!r}")
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {self.output_stride}")
        if not all(n >= 1 for n in self.layers):
            raise ValueError(f"layers (blocks per stage) must be positive, got {self.layers}")

    def test_overrides(self) -> dict:
        return dict(layers=(1,) * len(self.layers), img_size=64)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int, first_dilation: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_ch, width, 3, stride=stride, padding=first_dilation, dilation=first_dilation, bias=False
        )
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.act = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_ch, width, stride)

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(x)) + shortcut)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, first_dilation: int = 1, dilation: int = 1) -> None:
        super().__init__()
        out = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(
            width, width, 3, stride=stride, padding=first_dilation, dilation=first_dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.act = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_ch, out, stride)

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        return self.act(self.bn3(self.conv3(x)) + shortcut)


def _shortcut(in_ch: int, out: int, stride: int) -> nn.Module | None:
    """Projection shortcut (option B of the paper) where the shape changes."""
    if stride == 1 and in_ch == out:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))


class ResNet(ModelBase):
    """Shapes: (B, C, H, W) -> features (B, 512 x expansion, H/32, W/32) -> logits (B, num_classes)."""

    head_name = "fc"
    first_conv = "conv1"
    crop_pct = 0.95
    __jit_unused_properties__ = [*ModelBase.__jit_unused_properties__, "stages"]

    def __init__(self, cfg: ResNetConfig) -> None:
        block = BasicBlock if cfg.block == "basic" else Bottleneck
        super().__init__(cfg, num_features=cfg.widths[-1] * block.expansion)
        self.conv1 = nn.Conv2d(cfg.in_chans, cfg.stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(cfg.stem_width)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch, prev_dilation = cfg.stem_width, 1
        for i, (n, width, (stride, dilation)) in enumerate(zip(cfg.layers, cfg.widths, self._strides(), strict=True)):
            blocks = []
            for j in range(n):
                # a block's first 3x3 conv keeps the previous block's dilation (as timm and torchvision)
                blocks.append(
                    self._make_block(block, i, j, in_ch, width, stride if j == 0 else 1, prev_dilation, dilation)
                )
                in_ch, prev_dilation = width * block.expansion, dilation
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if cfg.zero_init_last:
            for m in self.modules():
                if isinstance(m, BasicBlock | Bottleneck):
                    nn.init.zeros_(m.last_norm().weight)
        self.fc = make_head(self.num_features, cfg.num_classes)

    def _strides(self) -> list[tuple[int, int]]:
        """(stride, dilation) per stage: stages past `output_stride` keep stride 1 and double their dilation."""
        out, net, dilation = [], 4, 1
        for i in range(len(self.cfg.layers)):
            stride = 1 if i == 0 else 2
            if net >= self.cfg.output_stride and stride > 1:
                dilation, stride = dilation * stride, 1
            else:
                net *= stride
            out.append((stride, dilation))
        return out

    def _make_block(
        self, block: type[nn.Module], stage: int, index: int, in_ch: int, width: int, stride: int,
        first_dilation: int = 1, dilation: int = 1,
    ):  # fmt: skip
        """Residual block `index` of stage `stage` (both 0-based); models/nonlocal_net.py adds non-local blocks here."""
        return block(in_ch, width, stride, first_dilation, dilation)

    @property
    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(len(self.cfg.layers))]

    def _forward_trunk(
        self, x: torch.Tensor, take: list[int] | None = None, stop: int | None = None
    ) -> tuple[torch.Tensor, list[Intermediate]]:
        """Outputs as timm's: 0 the stem (stride 2, before the max-pool), then layer1..layer4 (strides 4 to 32)."""
        x = self.act1(self.bn1(self.conv1(x)))
        outs: list[Intermediate] = []
        if take is not None and 0 in take:
            outs.append((x, None))
        x = self.maxpool(x)
        i = 1  # output index of the next stage
        # The stages by name: TorchScript can neither loop over a Python list of modules (`stages`) nor look one up
        # by a computed name; it unrolls this loop over the children.
        for name, stage in self.named_children():
            if name.startswith("layer"):  # layer1..layerN, in order
                if stop is None or i <= stop:  # (TorchScript has no `break` in a loop over modules)
                    x = checkpointed(stage, x) if self.grad_checkpointing and not torch.jit.is_scripting() else stage(x)
                    if take is not None and i in take:
                        outs.append((x, None))  # (B, C_i, H_i, W_i)
                i += 1
        return x, outs

    def _feature_info(self) -> list[dict]:
        info, reduction = [dict(num_chs=self.cfg.stem_width, reduction=2, module="act1")], 2
        for i, (stage, (stride, _)) in enumerate(zip(self.stages, self._strides(), strict=True)):
            reduction *= stride if i else 2 * stride  # layer1 follows the stride-2 max-pool
            info.append(dict(num_chs=stage[-1].last_norm().num_features, reduction=reduction, module=f"layer{i + 1}"))
        return info

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "":
            return x  # unpooled (B, C, H, W)
        x = x.mean(dim=(-2, -1))  # global average pool -> (B, C)
        return x if pre_logits else self.fc(x)


# ----- LeNet-5 and AlexNet: feature extractor + classifier MLP ----------------------------------------------------
@dataclass(frozen=True)
class ClassicCNNConfig(ImageModelConfig):
    dropout: float = 0.5  # AlexNet's dropout before each hidden fully connected layer (sec. 4.2); unused by LeNet

    def test_overrides(self) -> dict:
        return dict(img_size=min(self.img_size, 96), dropout=0.0)


class _ClassicCNN(ModelBase):
    """Shared API of the two plain CNNs: `features` (conv stack) -> flatten -> `classifier` (MLP with `fc` last)."""

    head_name = "fc"
    first_conv = "features.0"
    global_pools = ("avg",)  # an adaptive pool to the map size the classifier was built for, then flatten
    unpooled_features = False  # the classifier MLP follows the pool

    def __init__(
        self, cfg: ClassicCNNConfig, features: nn.Sequential, pool: nn.Module, classifier: nn.Sequential, hidden: int
    ) -> None:
        num_features = [m.out_channels for m in features if isinstance(m, nn.Conv2d)][-1]
        super().__init__(cfg, num_features=num_features, head_hidden_size=hidden)
        self.features = features
        self.pool = pool
        self.classifier = classifier
        self.fc = make_head(hidden, cfg.num_classes)
        # index in `features` of each block's last layer (TorchScript cannot test the layers' types: a type it has
        # renamed for another configuration fails isinstance)
        self.block_ends = [b - 1 for _, b in self._block_bounds()]

    def _block_bounds(self) -> list[tuple[int, int]]:
        """`features` cut after each pooling layer (conv -> activation [-> conv ...] -> pool), as [start, end) index
        pairs: the blocks that are checkpointed and whose outputs `forward_intermediates` returns."""
        ends = [i + 1 for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d | nn.AvgPool2d)]
        return list(zip([0, *ends], ends, strict=False))

    def _run_layers(self, start: int, end: int, x: torch.Tensor) -> torch.Tensor:
        for i in range(start, end):
            x = self.features[i](x)
        return x

    def _forward_trunk(
        self, x: torch.Tensor, take: list[int] | None = None, stop: int | None = None
    ) -> tuple[torch.Tensor, list[Intermediate]]:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self._forward_trunk_checkpointed(x, take, stop)
        outs: list[Intermediate] = []
        i = 0  # the block the next layer belongs to
        for j, layer in enumerate(self.features):
            if stop is None or i <= stop:  # (TorchScript has no `break` in a loop over modules)
                x = layer(x)
                if j in self.block_ends:
                    if take is not None and i in take:
                        outs.append((x, None))  # (B, C_i, H_i, W_i)
                    i += 1
        return x, outs

    def _forward_trunk_checkpointed(
        self, x: torch.Tensor, take: list[int] | None, stop: int | None
    ) -> tuple[torch.Tensor, list[Intermediate]]:
        """The same pass with each block's layers run as one checkpointed function (Python only)."""
        outs = []
        for i, (a, b) in enumerate(self._block_bounds()[: None if stop is None else stop + 1]):
            x = checkpointed(functools.partial(self._run_layers, a, b), x)  # (B, C_i, H_i, W_i)
            if take is not None and i in take:
                outs.append((x, None))
        return x, outs

    def _feature_info(self) -> list[dict]:
        info, r = [], 1
        for a, b in self._block_bounds():
            blk = list(self.features)[a:b]
            for m in blk:
                if isinstance(m, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
                    s = m.stride
                    r *= s[0] if isinstance(s, tuple) else s
            chs = [m.out_channels for m in blk if isinstance(m, nn.Conv2d)][-1]
            info.append(dict(num_chs=chs, reduction=r, module=f"features.{b - 1}"))
        return info

    def _pool_size(self) -> tuple[int, int]:
        side = self.cfg.img_size  # valid convolutions and pools: out = (in + 2 * padding - kernel) // stride + 1
        for m in self.features:
            if isinstance(m, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
                k, s, p = (v[0] if isinstance(v, tuple) else v for v in (m.kernel_size, m.stride, m.padding))
                side = (side + 2 * p - k) // s + 1
        return side, side

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.classifier(self.pool(x).flatten(1))
        return x if pre_logits else self.fc(x)


class LeNet5(_ClassicCNN):
    """Shapes: (B, 1, 32, 32) -> C1 (B, 6, 28, 28) -> S2 14x14 -> C3 (B, 16, 10, 10) -> S4 5x5 -> 120 -> 84 -> K."""

    def __init__(self, cfg: ClassicCNNConfig) -> None:
        features = nn.Sequential(
            nn.Conv2d(cfg.in_chans, 6, 5), nn.Tanh(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),
        )  # fmt: skip
        # C5 is a 5x5 convolution over the 5x5 map, i.e. a linear layer on the flattened map at 32x32 input;
        # the adaptive pool keeps other input sizes working.
        pool = nn.AdaptiveAvgPool2d(5)
        classifier = nn.Sequential(nn.Linear(16 * 25, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh())
        super().__init__(cfg, features, pool, classifier, hidden=84)


class AlexNet(_ClassicCNN):
    """Shapes: (B, 3, 224, 224) -> features (B, 256, 6, 6) -> 4096 -> 4096 -> K."""

    def __init__(self, cfg: ClassicCNNConfig) -> None:
        relu = lambda: nn.ReLU(inplace=True)  # noqa: E731
        features = nn.Sequential(
            nn.Conv2d(cfg.in_chans, 64, 11, stride=4, padding=2), relu(), nn.MaxPool2d(3, stride=2),
            nn.Conv2d(64, 192, 5, padding=2), relu(), nn.MaxPool2d(3, stride=2),
            nn.Conv2d(192, 384, 3, padding=1), relu(),
            nn.Conv2d(384, 256, 3, padding=1), relu(),
            nn.Conv2d(256, 256, 3, padding=1), relu(), nn.MaxPool2d(3, stride=2),
        )  # fmt: skip
        classifier = nn.Sequential(
            nn.Dropout(cfg.dropout), nn.Linear(256 * 36, 4096), relu(),
            nn.Dropout(cfg.dropout), nn.Linear(4096, 4096), relu(),
        )  # fmt: skip
        super().__init__(cfg, features, nn.AdaptiveAvgPool2d(6), classifier, hidden=4096)


_RESNETS = {
    "resnet18": dict(block="basic", layers=(2, 2, 2, 2)),
    "resnet34": dict(block="basic", layers=(3, 4, 6, 3)),
    "resnet50": dict(block="bottleneck", layers=(3, 4, 6, 3)),
    "resnet101": dict(block="bottleneck", layers=(3, 4, 23, 3)),
}

register_variants(_RESNETS, family="resnet", config_cls=ResNetConfig, model_cls=ResNet)


@register_model(family="classic_cnn", config_cls=ClassicCNNConfig)
def lenet5(**kw) -> LeNet5:
    return LeNet5(ClassicCNNConfig(**{**dict(img_size=32, in_chans=1, num_classes=10, mean=HALF, std=HALF), **kw}))


@register_model(family="classic_cnn", config_cls=ClassicCNNConfig)
def alexnet(**kw) -> AlexNet:
    return AlexNet(ClassicCNNConfig(**kw))
