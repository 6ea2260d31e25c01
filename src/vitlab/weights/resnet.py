"""Hugging Face transformers ResNet checkpoints -> vitlab (timm/torchvision-named) state dicts and configs."""

from __future__ import annotations

import re

import torch

from vitlab.errors import CheckpointError
from vitlab.weights.hf import HfConverter, head_fields, pick_variant, rename

_RULES = [
    (r"^embedder\.embedder\.convolution\.", "conv1."),
    (r"^embedder\.embedder\.normalization\.", "bn1."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.", r"S\1.\2.downsample.0."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.", r"S\1.\2.downsample.1."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.", r"S\1.\2.conv#\3."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.", r"S\1.\2.bn#\3."),
    (r"^classifier\.1\.", "fc."),
]


def _number(key: str) -> str:
    # HF counts stages and convs from 0; timm/torchvision name them layer1.. and conv1..
    key = re.sub(r"^S(\d+)\.", lambda m: f"layer{int(m.group(1)) + 1}.", key)
    return re.sub(r"(conv|bn)#(\d+)\.", lambda m: f"{m.group(1)}{int(m.group(2)) + 1}.", key)


def convert_resnet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {_number(k): v for k, v in rename(state, ("resnet.",), _RULES).items()}


def resnet_fields(config: dict) -> dict:
    """The ResNetConfig fields a transformers config.json fixes, weights aside."""
    if config.get("downsample_in_bottleneck") or config.get("downsample_in_first_stage"):
        raise CheckpointError(
            "config.json: ResNet with downsample_in_bottleneck/first_stage (v1 / D variants) is not supported"
        )
    if config.get("hidden_act", "relu") != "relu":
        raise CheckpointError(f"config.json: hidden_act={config['hidden_act']!r} is not supported (ResNet uses relu)")
    block = "bottleneck" if config.get("layer_type", "bottleneck") == "bottleneck" else "basic"
    expansion = 4 if block == "bottleneck" else 1
    return dict(
        block=block,
        layers=tuple(config["depths"]),
        widths=tuple(h // expansion for h in config["hidden_sizes"]),
        stem_width=config.get("embedding_size", 64),
        in_chans=config.get("num_channels", 3),
    )


def resnet_arch(config: dict, state: dict[str, torch.Tensor]) -> dict:
    return dict(resnet_fields(config), **head_fields(config, state, "fc.weight"))


# ----- registered variants a config.json can name (models/resnet.py; tests/test_factory.py checks they agree) --------
def _v(block: str, layers: tuple) -> dict:
    return dict(block=block, layers=layers, widths=(64, 128, 256, 512), stem_width=64, in_chans=3)


RESNET_VARIANTS = {  # the base first: it wins ties
    "resnet50": _v("bottleneck", (3, 4, 6, 3)),
    "resnet101": _v("bottleneck", (3, 4, 23, 3)),
    "resnet18": _v("basic", (2, 2, 2, 2)),
    "resnet34": _v("basic", (3, 4, 6, 3)),
}


def resnet_model_for(config: dict) -> tuple[str, dict]:
    """config.json -> (registered name, overrides), e.g. microsoft/resnet-50's -> `resnet50`."""
    return pick_variant(resnet_fields(config), RESNET_VARIANTS)


HF = HfConverter(
    family="resnet",
    marker="embedder.embedder.convolution.weight",
    convert=convert_resnet,
    arch=resnet_arch,
    model_for=resnet_model_for,
)
