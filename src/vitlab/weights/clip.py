"""CLIP state dicts -> vitlab's `ClipModel` names: HF transformers' `CLIPModel` and openai/CLIP / open_clip.

Pure dict -> dict functions (no model is imported). `convert_clip` tells the formats apart by their keys.
- HF: separate q/k/v projections are fused into vitlab's `attn.qkv` (q, k, v stacked along the output axis).
- openai/CLIP and open_clip (`visual.conv1.weight`, `transformer.resblocks.N...`): `nn.MultiheadAttention`'s
  `in_proj_weight` is already q, k, v stacked; the projections `visual.proj` and `text_projection` are (D, E)
  matrices applied as `x @ proj`, so they are transposed into `nn.Linear` weights (E, D).
"""

from __future__ import annotations

import re

import torch

from vitlab.errors import CheckpointError, ConfigError
from vitlab.weights.hf import HfConverter, pick_variant

__all__ = [
    "HF",
    "clip_config_from_hf",
    "convert_clip",
    "convert_clip_hf",
    "convert_clip_openai",
    "is_clip_hf",
    "is_clip_openai",
]

# ----- HF transformers CLIPModel ------------------------------------------------------------------------------------
_HF_RULES = [
    (r"^vision_model\.embeddings\.patch_embedding\.", "visual.patch_embed."),
    (r"^vision_model\.embeddings\.class_embedding$", "visual.cls_token"),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.pos_embed"),
    (r"^vision_model\.pre_layrnorm\.", "visual.norm_pre."),  # sic: HF's attribute name
    (r"^vision_model\.post_layernorm\.", "visual.norm."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.", r"visual.blocks.\1."),
    (r"^visual_projection\.", "visual.proj."),
    (r"^text_model\.embeddings\.token_embedding\.", "text.token_embed."),
    (r"^text_model\.embeddings\.position_embedding\.weight$", "text.pos_embed"),
    (r"^text_model\.final_layer_norm\.", "text.norm."),
    (r"^text_model\.encoder\.layers\.(\d+)\.", r"text.blocks.\1."),
    (r"^text_projection\.", "text.proj."),
]
_HF_BLOCK_PARTS = [
    (".self_attn.out_proj.", ".attn.proj."),
    (".layer_norm1.", ".norm1."),
    (".layer_norm2.", ".norm2."),
]
_HF_QKV = re.compile(r"^(.*)\.self_attn\.([qkv])_proj\.(weight|bias)$")


def _rename(key: str, rules, parts) -> str:
    """The first regex rule that matches `key` applied, then every block-part substring replacement."""
    for pattern, repl in rules:
        key, n = re.subn(pattern, repl, key)
        if n:
            break
    for old, new in parts:
        key = key.replace(old, new)
    return key


def is_clip_hf(state: dict) -> bool:
    return "vision_model.embeddings.class_embedding" in state and "text_projection.weight" in state


def convert_clip_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' CLIPModel keys -> vitlab ClipModel keys; q/k/v projections fused into one `attn.qkv`."""
    out, qkv = {}, {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue  # a buffer older transformers saved; vitlab indexes its tables directly
        key = _rename(key, _HF_RULES, _HF_BLOCK_PARTS)
        m = _HF_QKV.match(key)
        if m:
            qkv.setdefault((m[1], m[3]), {})[m[2]] = value
            continue
        out[key] = value
    for (prefix, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise KeyError(f"{prefix}.self_attn: found the {sorted(parts)} projections' {kind}, expected q, k and v")
        out[f"{prefix}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


# ----- openai/CLIP and open_clip -----------------------------------------------------------------------------------
_OPENAI_RULES = [
    (r"^visual\.conv1\.", "visual.patch_embed."),
    (r"^visual\.class_embedding$", "visual.cls_token"),
    (r"^visual\.positional_embedding$", "visual.pos_embed"),
    (r"^visual\.ln_pre\.", "visual.norm_pre."),
    (r"^visual\.ln_post\.", "visual.norm."),
    (r"^visual\.transformer\.resblocks\.(\d+)\.", r"visual.blocks.\1."),
    (r"^token_embedding\.", "text.token_embed."),
    (r"^positional_embedding$", "text.pos_embed"),
    (r"^ln_final\.", "text.norm."),
    (r"^transformer\.resblocks\.(\d+)\.", r"text.blocks.\1."),
]
_OPENAI_BLOCK_PARTS = [
    (".attn.in_proj_weight", ".attn.qkv.weight"),
    (".attn.in_proj_bias", ".attn.qkv.bias"),
    (".attn.out_proj.", ".attn.proj."),
    (".ln_1.", ".norm1."),
    (".ln_2.", ".norm2."),
    (".mlp.c_fc.", ".mlp.fc1."),
    (".mlp.c_proj.", ".mlp.fc2."),
]
_OPENAI_PROJECTIONS = {"visual.proj": "visual.proj.weight", "text_projection": "text.proj.weight"}
# saved by openai/CLIP's JIT archives or older open_clip versions; the config carries them, or they are derived
_OPENAI_NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def is_clip_openai(state: dict) -> bool:
    return "visual.conv1.weight" in state and "token_embedding.weight" in state


def convert_clip_openai(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """openai/CLIP or open_clip ViT keys -> vitlab ClipModel keys; (D, E) projections transposed to (E, D)."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")  # saved from a DistributedDataParallel wrapper
        if key.split(".")[-1] in _OPENAI_NOT_WEIGHTS:
            continue
        if key in _OPENAI_PROJECTIONS:
            out[_OPENAI_PROJECTIONS[key]] = value.t().contiguous()  # used as x @ proj: (D, E) -> Linear's (E, D)
            continue
        key = _rename(key, _OPENAI_RULES, _OPENAI_BLOCK_PARTS)
        out[key] = value
    return out


def convert_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any supported CLIP state dict -> vitlab names; vitlab's own keys pass through unchanged."""
    if is_clip_hf(state):
        return convert_clip_hf(state)
    if is_clip_openai({k.removeprefix("module."): v for k, v in state.items()}):
        return convert_clip_openai(state)
    return dict(state)


def clip_config_from_hf(config: dict) -> dict:
    """A transformers CLIPModel `config.json` (as a dict) -> the vitlab ClipConfig fields it fixes.

    vitlab's towers share one `mlp_ratio` and pool text at the largest id (argmax, as openai/CLIP): a config whose
    towers differ there, or whose end-of-text id is not the vocabulary's last, is refused rather than misread.
    """
    v, t = config["vision_config"], config["text_config"]
    ratios = {v["intermediate_size"] / v["hidden_size"], t["intermediate_size"] / t["hidden_size"]}
    if len(ratios) != 1:
        raise ValueError(f"CLIP config: vision and text MLP ratios differ ({sorted(ratios)}); vitlab shares one")
    if t.get("eos_token_id", 2) not in (2, t["vocab_size"] - 1):  # 2: HF's legacy value, meaning argmax pooling
        raise ValueError(
            f"CLIP config: text eos_token_id={t['eos_token_id']} is not the last id ({t['vocab_size'] - 1}); vitlab "
            "pools at the largest id, as openai/CLIP does"
        )
    if v["hidden_act"] != t["hidden_act"] or v["hidden_act"] not in ("quick_gelu", "gelu"):
        acts = f"{v['hidden_act']!r} (vision), {t['hidden_act']!r} (text)"
        raise ValueError(f"CLIP config: hidden_act {acts}; vitlab's towers share quick_gelu or gelu")
    return dict(
        embed_dim=config["projection_dim"],
        img_size=v["image_size"],
        patch_size=v["patch_size"],
        in_chans=v.get("num_channels", 3),
        vision_width=v["hidden_size"],
        vision_depth=v["num_hidden_layers"],
        vision_heads=v["num_attention_heads"],
        context_length=t["max_position_embeddings"],
        vocab_size=t["vocab_size"],
        text_width=t["hidden_size"],
        text_depth=t["num_hidden_layers"],
        text_heads=t["num_attention_heads"],
        mlp_ratio=ratios.pop(),
        quick_gelu=v["hidden_act"] == "quick_gelu",
        norm_eps=v["layer_norm_eps"],
        logit_scale_init=config.get("logit_scale_init_value", 2.6592),
    )


# ----- the converter the loader finds by model_type "clip" or by key ------------------------------------------------
_B32 = dict(
    embed_dim=512, img_size=224, patch_size=32, in_chans=3, vision_width=768, vision_depth=12, vision_heads=12,
    context_length=77, vocab_size=49408, text_width=512, text_depth=12, text_heads=8, mlp_ratio=4.0, quick_gelu=True,
)  # fmt: skip
# the registered CLIP variants' defining fields (vitlab.models.clip.CLIP_VARIANTS; a test keeps the two equal)
CLIP_HF_VARIANTS: dict[str, dict] = {
    "clip_vit_base_patch32_224": _B32,
    "clip_vit_base_patch16_224": {**_B32, "patch_size": 16},
    "clip_vit_large_patch14_224": {
        **_B32, "patch_size": 14, "embed_dim": 768, "vision_width": 1024, "vision_depth": 24, "vision_heads": 16,
        "text_width": 768, "text_heads": 12,
    },
    "clip_vit_tiny_patch8_32": {
        **_B32, "img_size": 32, "patch_size": 8, "embed_dim": 64, "vision_width": 64, "vision_depth": 2,
        "vision_heads": 2, "text_width": 64, "text_depth": 2, "text_heads": 2, "quick_gelu": False,
    },
}  # fmt: skip
_NUMERICS = ("norm_eps", "logit_scale_init")


def _fields(config: dict) -> dict:
    try:
        return clip_config_from_hf(config)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def clip_model_for(config: dict) -> tuple[str, dict]:
    """config.json (model_type "clip") -> (registered name, overrides): ViT-B/32 at 224 -> clip_vit_base_patch32_224."""
    return pick_variant(_fields(config), CLIP_HF_VARIANTS, numerics=_NUMERICS)


def clip_to_hf(cfg: dict, state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    raise ConfigError("writing CLIP as a transformers CLIPModel is not supported; save a vitlab checkpoint")


HF = HfConverter(
    family="clip",
    marker=("vision_model.embeddings.class_embedding", "visual.class_embedding"),  # HF's; openai/open_clip's
    convert=convert_clip,
    arch=lambda config, state: _fields(config),
    model_for=clip_model_for,
    to_hf=clip_to_hf,
)
