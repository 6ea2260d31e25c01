"""Hugging Face transformers `ASTForAudioClassification` checkpoints <-> vitlab's AST (`vitlab.models.ast`).

The encoder is ViT's layout under the `audio_spectrogram_transformer.` prefix, so ViT's renaming rules
(`vitlab.weights.vit`, both transformers 4's `encoder.layer.N.attention.attention.query` and 5's
`layers.N.attention.q_proj`) apply; the head is `classifier.layernorm` + `classifier.dense` (vitlab's `head_norm`
and `head`). config.json's `frequency_stride` / `time_stride` / `num_mel_bins` / `max_length` fix the patch grid.
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
    split_qkv,
)
from vitlab.weights.vit import _RENAMES as VIT_RENAMES
from vitlab.weights.vit import _TO_HF as VIT_TO_HF

MODEL_TYPE = "audio-spectrogram-transformer"
_PREFIX = "audio_spectrogram_transformer."
_RENAMES = [
    (r"^classifier\.layernorm\.", "head_norm."),
    (r"^classifier\.dense\.", "head."),
    *VIT_RENAMES,
]


def convert_ast(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return fuse_qkv(rename(state, (_PREFIX,), _RENAMES))


def ast_fields(config: dict) -> dict:
    """The ASTConfig fields a transformers ASTConfig (config.json) fixes, weights aside."""
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"config.json: hidden_act={act!r} is not supported (vitlab's AST uses exact 'gelu')")
    patch = config.get("patch_size", 16)
    if isinstance(patch, list | tuple):  # HF allows a pair; vitlab's patches are square
        if len(set(patch)) != 1:
            raise CheckpointError(f"config.json: patch_size={patch} is not square; vitlab's AST cuts square patches")
        patch = patch[0]
    D = config["hidden_size"]
    return dict(
        embed_dim=D,
        depth=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        mlp_ratio=config["intermediate_size"] / D,
        patch_size=patch,
        fstride=config.get("frequency_stride", 10),
        tstride=config.get("time_stride", 10),
        num_mel_bins=config.get("num_mel_bins", 128),
        max_length=config.get("max_length", 1024),
        qkv_bias=config.get("qkv_bias", True),
        norm_eps=config.get("layer_norm_eps", 1e-12),
    )


def ast_arch_from_config(config: dict, state: dict[str, torch.Tensor]) -> dict:
    return {**ast_fields(config), **head_fields(config, state, "head.weight")}


# the registered variants' defining fields (vitlab.models.ast.AST_VARIANTS; tests/test_ast.py keeps them equal)
_B = dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, patch_size=16, fstride=10, tstride=10,
          num_mel_bins=128, qkv_bias=True)  # fmt: skip
AST_HF_VARIANTS: dict[str, dict] = {
    "ast_base_patch16_stride10_audioset": {**_B, "max_length": 1024},
    "ast_base_patch16_stride10_speechcommands": {**_B, "max_length": 128},
    "ast_micro_patch16_stride10_64x200": {
        **_B, "embed_dim": 96, "depth": 4, "num_heads": 4, "mlp_ratio": 2.0, "num_mel_bins": 64, "max_length": 200,
    },
}  # fmt: skip


def ast_model_for(config: dict) -> tuple[str, dict]:
    """config.json -> (registered name, overrides): the base at 1024 frames -> ast_base_patch16_stride10_audioset."""
    return pick_variant(ast_fields(config), AST_HF_VARIANTS, numerics=("norm_eps",))


_TO_HF = [(r"^head_norm\.", "classifier.layernorm."), (r"^head\.", "classifier.dense."), *VIT_TO_HF]


def ast_to_hf(cfg: dict, state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """ASTConfig fields + weights -> an ASTForAudioClassification config.json and state dict."""
    D = cfg["embed_dim"]
    fields = dict(
        hidden_size=D,
        num_hidden_layers=cfg["depth"],
        num_attention_heads=cfg["num_heads"],
        intermediate_size=int(D * cfg["mlp_ratio"]),
        hidden_act="gelu",
        patch_size=cfg["patch_size"],
        frequency_stride=cfg["fstride"],
        time_stride=cfg["tstride"],
        num_mel_bins=cfg["num_mel_bins"],
        max_length=cfg["max_length"],
        qkv_bias=cfg["qkv_bias"],
        layer_norm_eps=cfg["norm_eps"],
    )
    state = rename_to_hf(split_qkv(state, ("query", "key", "value")), _TO_HF, _PREFIX)
    return hf_config(MODEL_TYPE, "ASTForAudioClassification", fields, cfg), state


HF = HfConverter(
    family="ast",
    marker=_PREFIX + "embeddings.distillation_token",
    convert=convert_ast,
    arch=ast_arch_from_config,
    model_for=ast_model_for,
    to_hf=ast_to_hf,
)
