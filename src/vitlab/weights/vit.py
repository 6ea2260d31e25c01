"""Hugging Face transformers ViT / DeiT checkpoints -> vitlab (timm-named) state dicts and configs.

Reads both key layouts: the one `save_pretrained` writes (`encoder.layer.N.attention.attention.query`) and the
renamed modules of transformers 5 (`layers.N.attention.q_proj`). q, k and v are concatenated into one `qkv`.
"""

from __future__ import annotations

import torch

from vitlab.errors import CheckpointError
from vitlab.weights.hf import HfConverter, fuse_qkv, head_fields, rename

_PREFIXES = ("vit.", "deit.")

_RENAMES = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.distillation_token$", "dist_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.attention\.attention\.(query|key|value)\.", r"blocks.\1.attn.__\2__."),
    (r"^layers\.(\d+)\.attention\.(q|k|v)_proj\.", r"blocks.\1.attn.__\2__."),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^layers\.(\d+)\.attention\.o_proj\.", r"blocks.\1.attn.proj."),
    (r"^(?:encoder\.layer\.(\d+)\.intermediate\.dense|layers\.(\d+)\.mlp\.fc1)\.", r"blocks.\1\2.mlp.fc1."),
    (r"^(?:encoder\.layer\.(\d+)\.output\.dense|layers\.(\d+)\.mlp\.fc2)\.", r"blocks.\1\2.mlp.fc2."),
    (r"^layernorm\.", "norm."),
    (r"^(?:classifier|cls_classifier)\.", "head."),
    (r"^distillation_classifier\.", "head_dist."),
]


def convert_vit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return fuse_qkv(rename(state, _PREFIXES, _RENAMES))


def vit_arch_from_config(config: dict, state: dict[str, torch.Tensor]) -> dict:
    """ViTConfig fields from a transformers config.json (ViTConfig / DeiTConfig)."""
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"config.json: hidden_act={act!r} is not supported (vitlab's ViT uses exact 'gelu')")
    D = config["hidden_size"]
    arch = dict(
        embed_dim=D,
        depth=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        mlp_ratio=config["intermediate_size"] / D,
        patch_size=config["patch_size"],
        img_size=config["image_size"],
        in_chans=config.get("num_channels", 3),
        qkv_bias=config.get("qkv_bias", True),
        norm_eps=config.get("layer_norm_eps", 1e-12),
        distilled="dist_token" in state,
        class_token=True,
        global_pool="token",
    )
    arch.update(head_fields(config, state, "head.weight"))
    if arch["distilled"] and "head_dist.weight" not in state and "head.weight" in state:
        raise CheckpointError(
            "a DeiT checkpoint with a distillation token but one classifier (DeiTForImageClassification) is not "
            "supported; use DeiTForImageClassificationWithTeacher or DeiTModel weights"
        )
    return arch


HF = HfConverter(
    family="vit",
    model_types=("vit", "deit"),
    marker="embeddings.patch_embeddings.projection.weight",
    convert=convert_vit,
    arch=vit_arch_from_config,
)
