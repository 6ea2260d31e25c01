"""Hugging Face transformers ResNet checkpoints <-> vitlab (timm/torchvision-named) state dicts and configs."""

from __future__ import annotations

import re

import torch

from vitlab.errors import CheckpointError
from vitlab.weights.hf import HfConverter, head_fields, hf_config, pick_variant, rename, rename_to_hf

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
    arch = dict(resnet_fields(config), **head_fields(config, state, "fc.weight"))
    if "image_size" in config:  # not a ResNetConfig field: what `vitlab export` writes beside them
        arch["img_size"] = config["image_size"]
    return arch


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


# ----- vitlab -> transformers ---------------------------------------------------------------------------------------
def _block(m) -> str:
    # our layer1.. and conv1.. count from 1; HF's stages and convs from 0
    return f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}."


_TO_HF = [
    (r"^conv1\.", "embedder.embedder.convolution."),
    (r"^bn1\.", "embedder.embedder.normalization."),
    (r"^layer(\d+)\.(\d+)\.downsample\.0\.", lambda m: _block(m) + "shortcut.convolution."),
    (r"^layer(\d+)\.(\d+)\.downsample\.1\.", lambda m: _block(m) + "shortcut.normalization."),
    (r"^layer(\d+)\.(\d+)\.conv(\d+)\.", lambda m: _block(m) + f"layer.{int(m[3]) - 1}.convolution."),
    (r"^layer(\d+)\.(\d+)\.bn(\d+)\.", lambda m: _block(m) + f"layer.{int(m[3]) - 1}.normalization."),
    (r"^fc\.", "classifier.1."),
]


def resnet_to_hf(cfg: dict, state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """ResNetConfig fields + weights -> a ResNetForImageClassification (v1.5: stride on the 3x3 conv, as ours)."""
    expansion = 4 if cfg["block"] == "bottleneck" else 1
    fields = dict(
        num_channels=cfg["in_chans"],
        embedding_size=cfg["stem_width"],
        hidden_sizes=[w * expansion for w in cfg["widths"]],
        depths=list(cfg["layers"]),
        layer_type=cfg["block"],
        hidden_act="relu",
        downsample_in_first_stage=False,
        downsample_in_bottleneck=False,
        image_size=cfg["img_size"],  # not a ResNetConfig field; kept in config.json for vitlab to read back
    )
    state = rename_to_hf(state, _TO_HF, "resnet.")
    return hf_config("resnet", "ResNetForImageClassification", fields, cfg), state


HF = HfConverter(
    family="resnet",
    marker="embedder.embedder.convolution.weight",
    convert=convert_resnet,
    arch=resnet_arch,
    model_for=resnet_model_for,
    to_hf=resnet_to_hf,
)
