"""Hugging Face transformers ViT / DeiT checkpoints <-> vitlab (timm-named) state dicts and configs.

Reads both key layouts: the one `save_pretrained` writes (`encoder.layer.N.attention.attention.query`) and the
renamed modules of transformers 5 (`layers.N.attention.q_proj`). q, k and v are concatenated into one `qkv`.
Writes the first layout (`vit_to_hf`): a plain or distilled ViT with a learned position table and the class-token
head, which is all that transformers' ViT and DeiT classes build.
"""

from __future__ import annotations

import torch

from vitlab.errors import CheckpointError
from vitlab.weights.hf import (
    HfConverter,
    fuse_qkv,
    head_fields,
    hf_config,
    pick_variant,
    rename,
    rename_to_hf,
    require,
    split_qkv,
)

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


def vit_fields(config: dict) -> dict:
    """The ViTConfig fields a transformers config.json (ViTConfig / DeiTConfig) fixes, weights aside."""
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"config.json: hidden_act={act!r} is not supported (vitlab's ViT uses exact 'gelu')")
    D = config["hidden_size"]
    return dict(
        embed_dim=D,
        depth=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        mlp_ratio=config["intermediate_size"] / D,
        patch_size=config["patch_size"],
        img_size=config["image_size"],
        in_chans=config.get("num_channels", 3),
        qkv_bias=config.get("qkv_bias", True),
        distilled=config.get("model_type") == "deit",  # transformers' DeiT always has the distillation token
        norm_eps=config.get("layer_norm_eps", 1e-12),
    )


def vit_arch_from_config(config: dict, state: dict[str, torch.Tensor]) -> dict:
    """ViTConfig fields from a transformers config.json and the (converted) weights: sizes, head, class names."""
    arch = dict(vit_fields(config), distilled="dist_token" in state, class_token=True, global_pool="token")
    arch.update(head_fields(config, state, "head.weight"))
    if arch["distilled"] and "head_dist.weight" not in state and "head.weight" in state:
        raise CheckpointError(
            "a DeiT checkpoint with a distillation token but one classifier (DeiTForImageClassification) is not "
            "supported; use DeiTForImageClassificationWithTeacher or DeiTModel weights"
        )
    return arch


# ----- registered variants a config.json can name (models/vit.py; tests/test_factory.py checks they agree) -----------
_SIZES = {  # (embed_dim, depth, num_heads), ViT Table 1 and DeiT Table 1
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
    "mini": (192, 6, 3),
    "micro": (64, 4, 4),
}


def _v(size: str, patch_size: int, img_size: int = 224, **kw) -> dict:
    D, L, H = _SIZES[size]
    base = dict(mlp_ratio=4.0, in_chans=3, qkv_bias=True, distilled=False)
    if size == "micro":  # the 8x8 digits configs
        base.update(mlp_ratio=2.0, in_chans=1)
    return {**base, "embed_dim": D, "depth": L, "num_heads": H, "patch_size": patch_size, "img_size": img_size, **kw}


VIT_VARIANTS = {  # the base first: it wins ties
    "vit_base_patch16_224": _v("base", 16),
    "vit_base_patch16_384": _v("base", 16, 384),
    "vit_base_patch8_224": _v("base", 8),
    "vit_base_patch32_224": _v("base", 32),
    "vit_base_patch32_384": _v("base", 32, 384),
    "vit_tiny_patch16_224": _v("tiny", 16),
    "vit_tiny_patch16_384": _v("tiny", 16, 384),
    "vit_small_patch16_224": _v("small", 16),
    "vit_small_patch16_384": _v("small", 16, 384),
    "vit_small_patch32_224": _v("small", 32),
    "vit_large_patch16_224": _v("large", 16),
    "vit_large_patch16_384": _v("large", 16, 384),
    "vit_large_patch32_224": _v("large", 32),
    "vit_huge_patch14_224": _v("huge", 14),
    "vit_mini_patch4_32": _v("mini", 4, 32),
    "vit_micro_patch2_8": _v("micro", 2, 8),
    "vit_micro_patch4_8": _v("micro", 4, 8),
    "vit_micro_patch4_16": _v("micro", 4, 16),
    # DINO's backbones (transformers' ViTModel of facebook/dino-*): the sizes of the plain ones above, which win ties
    "vit_small_patch16_224.dino": _v("small", 16),
    "vit_small_patch8_224.dino": _v("small", 8),
    "vit_base_patch16_224.dino": _v("base", 16),
    "vit_base_patch8_224.dino": _v("base", 8),
}
DEIT_VARIANTS = {  # transformers' DeiT has the distillation token: the distilled variants
    "deit_base_distilled_patch16_224": _v("base", 16, distilled=True),
    "deit_base_distilled_patch16_384": _v("base", 16, 384, distilled=True),
    "deit_tiny_distilled_patch16_224": _v("tiny", 16, distilled=True),
    "deit_small_distilled_patch16_224": _v("small", 16, distilled=True),
    "deit_micro_distilled_patch4_8": _v("micro", 4, 8, distilled=True),
}


def vit_model_for(config: dict) -> tuple[str, dict]:
    """config.json (model_type "vit" or "deit") -> (registered name, overrides), e.g. ViT-B/16 at 224 ->
    `vit_base_patch16_224`; a DeiT -> a `deit_*_distilled_*` variant."""
    variants = DEIT_VARIANTS if config.get("model_type") == "deit" else VIT_VARIANTS
    return pick_variant(vit_fields(config), variants, numerics=("norm_eps",))


# ----- vitlab -> transformers ---------------------------------------------------------------------------------------
_L = r"^blocks\.(\d+)\."
_TO_HF = [
    (r"^cls_token$", "embeddings.cls_token"),
    (r"^dist_token$", "embeddings.distillation_token"),
    (r"^pos_embed$", "embeddings.position_embeddings"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embeddings.projection."),
    (_L + r"attn\.(query|key|value)\.", r"encoder.layer.\1.attention.attention.\2."),
    (_L + r"attn\.proj\.", r"encoder.layer.\1.attention.output.dense."),
    (_L + r"norm1\.", r"encoder.layer.\1.layernorm_before."),
    (_L + r"norm2\.", r"encoder.layer.\1.layernorm_after."),
    (_L + r"mlp\.fc1\.", r"encoder.layer.\1.intermediate.dense."),
    (_L + r"mlp\.fc2\.", r"encoder.layer.\1.output.dense."),
    (r"^norm\.", "layernorm."),
    (r"^head_dist\.", "distillation_classifier."),
]


def vit_to_hf(cfg: dict, state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """ViTConfig fields + weights -> a ViTForImageClassification, or a DeiTForImageClassificationWithTeacher when
    distilled (the same layout plus the distillation token and head; its logits average the two heads, as ours)."""
    require(
        cfg["pos_embed"] == "learned" and cfg["class_token"] and cfg["global_pool"] == "token" and not cfg["fc_norm"],
        "transformers' ViT/DeiT have a learned position table, a class token and the head on it; this model has "
        f"pos_embed={cfg['pos_embed']!r}, class_token={cfg['class_token']}, global_pool={cfg['global_pool']!r}, "
        f"fc_norm={cfg['fc_norm']}",
    )
    D = cfg["embed_dim"]
    fields = dict(
        hidden_size=D,
        num_hidden_layers=cfg["depth"],
        num_attention_heads=cfg["num_heads"],
        intermediate_size=int(D * cfg["mlp_ratio"]),  # as vitlab's Mlp sizes it
        hidden_act="gelu",
        image_size=cfg["img_size"],
        patch_size=cfg["patch_size"],
        num_channels=cfg["in_chans"],
        qkv_bias=cfg["qkv_bias"],
        layer_norm_eps=cfg["norm_eps"],
    )
    if cfg["distilled"]:
        model_type, arch, prefix, head = "deit", "DeiTForImageClassificationWithTeacher", "deit.", "cls_classifier."
    else:
        model_type, arch, prefix, head = "vit", "ViTForImageClassification", "vit.", "classifier."
    rules = [*_TO_HF, (r"^head\.", head)]
    state = rename_to_hf(split_qkv(state, ("query", "key", "value")), rules, prefix, (head, "distillation_classifier."))
    return hf_config(model_type, arch, fields, cfg), state


HF = HfConverter(
    family="vit",
    marker="embeddings.patch_embeddings.projection.weight",
    convert=convert_vit,
    arch=vit_arch_from_config,
    model_for=vit_model_for,
    to_hf=vit_to_hf,
)
