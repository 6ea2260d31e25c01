"""Hugging Face transformers DETR (`DetrForObjectDetection`, ResNet backbone) state dicts -> vitlab's names."""

from __future__ import annotations

import re

import torch

from vitlab.weights.hf import rename
from vitlab.weights.resnet import _RULES as _RESNET_RULES
from vitlab.weights.resnet import _number

_HF_BACKBONE = "model.backbone.model."  # transformers >= 5 (use_timm_backbone=False)

_RULES = [
    (r"^model\.input_projection\.", "input_proj."),
    (r"^model\.query_position_embeddings\.", "query_embed."),
    (r"^model\.decoder\.layernorm\.", "decoder_norm."),
    (r"^model\.(encoder|decoder)\.layers\.(\d+)\.", r"\1.\2."),
    (r"^class_labels_classifier\.", "class_head."),
    (r"^bbox_predictor\.", "box_head."),
]
_LAYER_PARTS = [
    (".self_attn.o_proj.", ".self_attn.out_proj."),
    (".encoder_attn.o_proj.", ".cross_attn.out_proj."),
    (".encoder_attn.", ".cross_attn."),
    (".self_attn_layer_norm.", ".self_attn_norm."),
    (".encoder_attn_layer_norm.", ".cross_attn_norm."),
    (".final_layer_norm.", ".final_norm."),
]


def convert_detr_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' DetrForObjectDetection keys -> vitlab DETR keys (the backbone through the ResNet rules)."""
    backbone = {k[len(_HF_BACKBONE) :]: v for k, v in state.items() if k.startswith(_HF_BACKBONE)}
    out = {f"backbone.model.{_number(k)}": v for k, v in rename(backbone, (), _RESNET_RULES).items()}
    for key, value in rename({k: v for k, v in state.items() if not k.startswith(_HF_BACKBONE)}, (), _RULES).items():
        for old, new in _LAYER_PARTS:
            key = key.replace(old, new)
        out[key] = value
    return out


# ----- the official repo (facebookresearch/detr, `torch.hub` checkpoints' "model" entry) -----------------------------
_OFFICIAL_RULES = [
    (r"^backbone\.0\.body\.", "backbone.model."),  # torchvision ResNet names, as vitlab's ResNet uses
    (r"^transformer\.decoder\.norm\.", "decoder_norm."),
    (r"^transformer\.(encoder|decoder)\.layers\.(\d+)\.", r"\1.\2."),
    (r"^class_embed\.", "class_head."),
    (r"^bbox_embed\.", "box_head."),
]
_OFFICIAL_PARTS = [
    (".multihead_attn.", ".cross_attn."),
    (".linear1.", ".mlp.fc1."),
    (".linear2.", ".mlp.fc2."),
]
_OFFICIAL_NORMS = {
    "encoder": ("self_attn_norm", "final_norm"),
    "decoder": ("self_attn_norm", "cross_attn_norm", "final_norm"),
}


def convert_detr_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official DETR keys -> vitlab DETR keys: nn.MultiheadAttention's fused in_proj split into q/k/v, normN renamed."""
    out = {}
    for key, value in rename(state, (), _OFFICIAL_RULES).items():
        if key.endswith("num_batches_tracked"):
            continue  # frozen BN keeps no counter
        for old, new in _OFFICIAL_PARTS:
            key = key.replace(old, new)
        m = re.match(r"^(encoder|decoder)\.(\d+)\.norm(\d)\.(.*)$", key)
        if m:
            key = f"{m[1]}.{m[2]}.{_OFFICIAL_NORMS[m[1]][int(m[3]) - 1]}.{m[4]}"
        m = re.match(r"^(.*)\.in_proj_(weight|bias)$", key)
        if m:
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                out[f"{m[1]}.{part}.{m[2]}"] = chunk
            continue
        out[key] = value
    return out
