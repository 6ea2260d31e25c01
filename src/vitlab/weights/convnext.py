"""Hugging Face transformers ConvNeXt checkpoints -> vitlab (timm-named) state dicts and configs."""

from __future__ import annotations

import torch

from vitlab.weights.hf import HfConverter, head_fields, rename

_RULES = [
    (r"^embeddings\.patch_embeddings\.", "stem.0."),
    (r"^embeddings\.layernorm\.", "stem.1."),
    (r"^encoder\.stages\.(\d+)\.downsampling_layer\.", r"stages.\1.downsample."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.dwconv\.", r"stages.\1.blocks.\2.conv_dw."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layernorm\.", r"stages.\1.blocks.\2.norm."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.pwconv1\.", r"stages.\1.blocks.\2.mlp.fc1."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.pwconv2\.", r"stages.\1.blocks.\2.mlp.fc2."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer_scale_parameter$", r"stages.\1.blocks.\2.gamma"),
    (r"^layernorm\.", "head.norm."),
    (r"^classifier\.", "head.fc."),
]


def convert_convnext(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return rename(state, ("convnext.",), _RULES)


def convnext_arch(config: dict, state: dict[str, torch.Tensor]) -> dict:
    return dict(
        depths=tuple(config["depths"]),
        dims=tuple(config["hidden_sizes"]),
        patch_size=config.get("patch_size", 4),
        in_chans=config.get("num_channels", 3),
        img_size=config.get("image_size", 224),
        layer_scale_init=config.get("layer_scale_init_value", 1e-6),
        head_norm_eps=config.get("layer_norm_eps", 1e-12),
        **head_fields(config, state, "head.fc.weight"),
    )


HF = HfConverter(
    family="convnext",
    model_types=("convnext",),
    marker="embeddings.patch_embeddings.weight",
    convert=convert_convnext,
    arch=convnext_arch,
)
