"""Hugging Face transformers Swin checkpoints <-> vitlab (timm-named) state dicts and configs.

HF keeps a stage's patch merging at the end of that stage; timm (and vitlab) at the start of the next one.
"""

from __future__ import annotations

import re

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


def swin_fields(config: dict) -> dict:
    """The SwinConfig fields a transformers config.json fixes, weights aside."""
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
    )


def swin_arch(config: dict, state: dict[str, torch.Tensor]) -> dict:
    return dict(swin_fields(config), **head_fields(config, state, "head.fc.weight"))


# ----- registered variants a config.json can name (models/swin.py; tests/test_factory.py checks they agree) ----------
def _v(embed_dim: int, depths: tuple, num_heads: tuple, window_size: int = 7, img_size: int = 224, **kw) -> dict:
    return dict(
        img_size=img_size, patch_size=4, in_chans=3, embed_dim=embed_dim, depths=depths, num_heads=num_heads,
        window_size=window_size, mlp_ratio=4.0, qkv_bias=True, **kw,
    )  # fmt: skip


SWIN_VARIANTS = {  # the base first: it wins ties
    "swin_tiny_patch4_window7_224": _v(96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "swin_small_patch4_window7_224": _v(96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "swin_base_patch4_window7_224": _v(128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "swin_base_patch4_window12_384": _v(128, (2, 2, 18, 2), (4, 8, 16, 32), window_size=12, img_size=384),
    "swin_large_patch4_window7_224": _v(192, (2, 2, 18, 2), (6, 12, 24, 48)),
    "swin_micro_patch4_window4_32": _v(64, (2, 2, 2), (2, 4, 8), window_size=4, img_size=32),
}


def swin_model_for(config: dict) -> tuple[str, dict]:
    """config.json -> (registered name, overrides), e.g. Swin-T -> `swin_tiny_patch4_window7_224`."""
    return pick_variant(swin_fields(config), SWIN_VARIANTS, numerics=("norm_eps",))


# ----- vitlab -> transformers ---------------------------------------------------------------------------------------
_V = r"^layers\.(\d+)\.blocks\.(\d+)\."
_H = r"encoder.layers.\1.blocks.\2."
_TO_HF = [
    (r"^patch_embed\.proj\.", "embeddings.patch_embeddings.projection."),
    (r"^patch_embed\.norm\.", "embeddings.norm."),
    (_V + r"norm1\.", _H + "layernorm_before."),
    (_V + r"norm2\.", _H + "layernorm_after."),
    (_V + r"attn\.relative_position_bias_table$", _H + "attention.self.relative_position_bias_table"),
    (_V + r"attn\.(query|key|value)\.", _H + r"attention.self.\3."),
    (_V + r"attn\.proj\.", _H + "attention.output.dense."),
    (_V + r"mlp\.fc1\.", _H + "intermediate.dense."),
    (_V + r"mlp\.fc2\.", _H + "output.dense."),
    # patch merging: the start of our stage N is the end of HF's stage N - 1
    (r"^layers\.(\d+)\.downsample\.", lambda m: f"encoder.layers.{int(m[1]) - 1}.downsample."),
    (r"^norm\.", "layernorm."),
    (r"^head\.fc\.", "classifier."),
]


def swin_to_hf(cfg: dict, state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """SwinConfig fields + weights -> a SwinForImageClassification (relative position indices are rebuilt there)."""
    maps, side = [], cfg["img_size"] // cfg["patch_size"]
    for i in range(len(cfg["depths"])):
        side = side if i == 0 else (side + 1) // 2
        maps.append(side)
    require(  # transformers shrinks such a stage's window but keeps the full-size bias table: it cannot run
        min(maps) >= cfg["window_size"],
        f"transformers' Swin needs every stage's map to be at least the window ({cfg['window_size']}); this "
        f"model's maps are {maps}: a larger img_size or a smaller window_size",
    )
    fields = dict(
        image_size=cfg["img_size"],
        patch_size=cfg["patch_size"],
        num_channels=cfg["in_chans"],
        embed_dim=cfg["embed_dim"],
        depths=list(cfg["depths"]),
        num_heads=list(cfg["num_heads"]),
        window_size=cfg["window_size"],
        mlp_ratio=cfg["mlp_ratio"],
        qkv_bias=cfg["qkv_bias"],
        hidden_act="gelu",
        use_absolute_embeddings=False,
        layer_norm_eps=cfg["norm_eps"],
        drop_path_rate=cfg["drop_path_rate"],  # linear over all blocks in both
    )
    state = rename_to_hf(split_qkv(state, ("query", "key", "value")), _TO_HF, "swin.")
    return hf_config("swin", "SwinForImageClassification", fields, cfg), state


HF = HfConverter(
    family="swin",
    marker="attention.self.relative_position_bias_table",
    convert=convert_swin,
    arch=swin_arch,
    model_for=swin_model_for,
    to_hf=swin_to_hf,
)
