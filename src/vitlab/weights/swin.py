"""Hugging Face transformers Swin checkpoints -> vitlab (timm-named) state dicts and configs.

HF keeps a stage's patch merging at the end of that stage; timm (and vitlab) at the start of the next one.
"""

from __future__ import annotations

import re

import torch

from vitlab.errors import CheckpointError
from vitlab.weights.hf import HfConverter, fuse_qkv, head_fields, rename

_B = r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\."
_RULES = [
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^embeddings\.norm\.", "patch_embed.norm."),
    (_B + r"layernorm_before\.", r"layers.\1.blocks.\2.norm1."),
    (_B + r"layernorm_after\.", r"layers.\1.blocks.\2.norm2."),
    (_B + r"attention\.self\.relative_position_bias_table$", r"layers.\1.blocks.\2.attn.relative_position_bias_table"),
    (_B + r"attention\.self\.(query|key|value)\.", r"layers.\1.blocks.\2.attn.__\3__."),
    (_B + r"attention\.output\.dense\.", r"layers.\1.blocks.\2.attn.proj."),
    (_B + r"intermediate\.dense\.", r"layers.\1.blocks.\2.mlp.fc1."),
    (_B + r"output\.dense\.", r"layers.\1.blocks.\2.mlp.fc2."),
    (r"^encoder\.layers\.(\d+)\.downsample\.", r"MERGE\1."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head.fc."),
]


def convert_swin(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {k: v for k, v in state.items() if not k.endswith("relative_position_index")}  # rebuilt, not loaded
    out = fuse_qkv(rename(state, ("swin.",), _RULES))
    return {
        re.sub(r"^MERGE(\d+)\.", lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", k): v for k, v in out.items()
    }


def swin_arch(config: dict, state: dict[str, torch.Tensor]) -> dict:
    if config.get("use_absolute_embeddings"):
        raise CheckpointError("config.json: Swin with use_absolute_embeddings=True is not supported")
    if config.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"config.json: hidden_act={config['hidden_act']!r} is not supported (Swin uses gelu)")
    return dict(
        img_size=config["image_size"],
        patch_size=config["patch_size"],
        in_chans=config.get("num_channels", 3),
        embed_dim=config["embed_dim"],
        depths=tuple(config["depths"]),
        num_heads=tuple(config["num_heads"]),
        window_size=config["window_size"],
        mlp_ratio=config.get("mlp_ratio", 4.0),
        qkv_bias=config.get("qkv_bias", True),
        norm_eps=config.get("layer_norm_eps", 1e-5),
        **head_fields(config, state, "head.fc.weight"),
    )


HF = HfConverter(
    family="swin",
    model_types=("swin",),
    marker="attention.self.relative_position_bias_table",
    convert=convert_swin,
    arch=swin_arch,
)
