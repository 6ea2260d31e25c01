"""Hugging Face transformers ViViT and TimeSformer checkpoints -> vitlab's `ViViT` / `TimeSformer` names and configs.

Pure dict -> dict functions (no model is imported). `VivitForVideoClassification` / `VivitModel` (model 1: the only
one transformers has) and `TimesformerForVideoClassification` / `TimesformerModel` with divided or joint space-time
attention (transformers' "space_only" classifies each frame on its own: refused). Both layouts of ViViT's layers are
read (`encoder.layer.N.attention.attention.query` and transformers 5's `layers.N.attention.q_proj`); q, k and v are
fused into one `qkv`. TimeSformer's qkv is fused already.
"""

from __future__ import annotations

import torch

from vitlab.errors import CheckpointError, ConfigError
from vitlab.weights.hf import HfConverter, fuse_qkv, head_fields, pick_variant, rename

_BLOCK = r"^(?:encoder\.layer|layers)\.(\d+)\."
_VIVIT_RULES = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (_BLOCK + r"attention\.attention\.(query|key|value)\.", r"blocks.\1.attn.__\2__."),
    (_BLOCK + r"attention\.(q|k|v)_proj\.", r"blocks.\1.attn.__\2__."),
    (_BLOCK + r"(?:attention\.output\.dense|attention\.o_proj)\.", r"blocks.\1.attn.proj."),
    (_BLOCK + r"layernorm_before\.", r"blocks.\1.norm1."),
    (_BLOCK + r"layernorm_after\.", r"blocks.\1.norm2."),
    (_BLOCK + r"(?:intermediate\.dense|mlp\.fc1)\.", r"blocks.\1.mlp.fc1."),
    (_BLOCK + r"(?:output\.dense|mlp\.fc2)\.", r"blocks.\1.mlp.fc2."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
]
_TIMESFORMER_RULES = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.time_embeddings$", "time_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (_BLOCK + r"temporal_attention\.attention\.qkv\.", r"blocks.\1.temporal_attn.qkv."),
    (_BLOCK + r"temporal_attention\.output\.dense\.", r"blocks.\1.temporal_attn.proj."),
    (_BLOCK + r"temporal_layernorm\.", r"blocks.\1.temporal_norm."),
    (_BLOCK + r"temporal_dense\.", r"blocks.\1.temporal_fc."),
    (_BLOCK + r"attention\.attention\.qkv\.", r"blocks.\1.attn.qkv."),
    (_BLOCK + r"attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (_BLOCK + r"layernorm_before\.", r"blocks.\1.norm1."),
    (_BLOCK + r"layernorm_after\.", r"blocks.\1.norm2."),
    (_BLOCK + r"intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (_BLOCK + r"output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
]
# transformers' activation names -> vitlab's (gelu_fast, gelu_new and gelu_pytorch_tanh are one tanh approximation)
_ACTS = {"gelu": "gelu", "gelu_fast": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def convert_vivit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' ViViT keys -> vitlab ViViT (model 1) keys."""
    return fuse_qkv(rename(state, ("vivit.",), _VIVIT_RULES))


def convert_timesformer(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' TimeSformer keys -> vitlab TimeSformer keys."""
    return rename(state, ("timesformer.",), _TIMESFORMER_RULES)


def _square(value, what: str) -> int:
    sides = list(value) if isinstance(value, list | tuple) else [value, value]
    if len(sides) != 2 or sides[0] != sides[1]:
        raise CheckpointError(f"config.json: {what}={value!r}; vitlab's video models take square frames and patches")
    return int(sides[0])


def _common(config: dict) -> dict:
    act = config.get("hidden_act", "gelu")
    if act not in _ACTS:
        raise CheckpointError(f"config.json: hidden_act={act!r} is not supported (one of {', '.join(_ACTS)})")
    D = config["hidden_size"]
    return dict(
        img_size=_square(config["image_size"], "image_size"),
        num_frames=config["num_frames"],
        in_chans=config.get("num_channels", 3),
        embed_dim=D,
        depth=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        mlp_ratio=config["intermediate_size"] / D,
        qkv_bias=config.get("qkv_bias", True),
        act=_ACTS[act],
        norm_eps=config.get("layer_norm_eps", 1e-6),
    )


def vivit_fields(config: dict) -> dict:
    """The ViViTConfig fields a transformers VivitConfig fixes (model 1, the one transformers has)."""
    t, p, p2 = config.get("tubelet_size", (2, 16, 16))
    if p != p2:
        raise CheckpointError(f"config.json: tubelet_size={config['tubelet_size']}; vitlab's tubelets are square")
    return dict(_common(config), patch_size=p, tubelet_t=t, model="joint")


def timesformer_fields(config: dict) -> dict:
    attention = config.get("attention_type", "divided_space_time")
    if attention not in ("divided_space_time", "joint_space_time"):
        raise CheckpointError(
            f"config.json: attention_type={attention!r} is not supported (divided_space_time or joint_space_time; "
            "transformers' space_only classifies each frame separately)"
        )
    return dict(_common(config), patch_size=_square(config["patch_size"], "patch_size"), attention_type=attention)


# the registered variants' defining fields (vitlab.models.vivit / .timesformer; tests keep the two equal)
_B = dict(img_size=224, in_chans=3, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True)
_MICRO = dict(img_size=16, in_chans=3, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0, qkv_bias=True)
VIVIT_HF_VARIANTS: dict[str, dict] = {
    "vivit_base_patch16x2_224": {**_B, "num_frames": 32, "patch_size": 16, "tubelet_t": 2, "act": "gelu_tanh",
                                 "model": "joint"},
    "vivit_micro_patch4x2_16": {**_MICRO, "num_frames": 8, "patch_size": 4, "tubelet_t": 2, "act": "gelu",
                                "model": "joint"},
}  # fmt: skip
TIMESFORMER_HF_VARIANTS: dict[str, dict] = {
    "timesformer_base_patch16_224": {**_B, "num_frames": 8, "patch_size": 16, "act": "gelu",
                                     "attention_type": "divided_space_time"},
    "timesformer_base_joint_patch16_224": {**_B, "num_frames": 8, "patch_size": 16, "act": "gelu",
                                           "attention_type": "joint_space_time"},
    "timesformer_micro_patch4_16": {**_MICRO, "num_frames": 8, "patch_size": 4, "act": "gelu",
                                    "attention_type": "divided_space_time"},
    "timesformer_micro_joint_patch4_16": {**_MICRO, "num_frames": 8, "patch_size": 4, "act": "gelu",
                                          "attention_type": "joint_space_time"},
}  # fmt: skip
_NUMERICS = ("norm_eps",)


def _checked(fields):
    def read(config: dict) -> dict:
        try:
            return fields(config)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"config.json: {e}") from None

    return read


def _arch(fields):
    def arch(config: dict, state: dict[str, torch.Tensor]) -> dict:
        return dict(_checked(fields)(config), **head_fields(config, state, "head.weight"), global_pool="token")

    return arch


def _model_for(fields, variants):
    def model_for(config: dict) -> tuple[str, dict]:
        return pick_variant(_checked(fields)(config), variants, numerics=_NUMERICS)

    return model_for


def _no_export(cfg: dict, state: dict[str, torch.Tensor]):
    raise ConfigError("writing a video model as a transformers checkpoint is not supported; save a vitlab checkpoint")


VIVIT_HF = HfConverter(
    family="vivit",
    marker="vivit.embeddings.patch_embeddings.projection.weight",
    convert=convert_vivit,
    arch=_arch(vivit_fields),
    model_for=_model_for(vivit_fields, VIVIT_HF_VARIANTS),
    to_hf=_no_export,
)
TIMESFORMER_HF = HfConverter(
    family="timesformer",
    marker="timesformer.embeddings.time_embeddings",
    convert=convert_timesformer,
    arch=_arch(timesformer_fields),
    model_for=_model_for(timesformer_fields, TIMESFORMER_HF_VARIANTS),
    to_hf=_no_export,
)
