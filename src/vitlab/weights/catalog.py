"""The Hugging Face transformers formats vitlab reads: one converter per config.json `model_type`.

A new family (DETR, CLIP, DINOv2, MAE, ViViT) adds a converter module beside this file (`convert`, `arch`,
`model_for`: see `vitlab.weights.hf.HfConverter`) and one line to `HF_CONVERTERS`; the factory needs no change.
"""

from __future__ import annotations

import torch

from vitlab.weights import ast, clip, convnext, cvt, dinov2, mae, resnet, swin, video, vit
from vitlab.weights.hf import HfConverter

HF_CONVERTERS: dict[str, HfConverter] = {
    # first: an AST state dict also holds ViT's marker key (find_by_keys takes the first match)
    ast.MODEL_TYPE: ast.HF,  # transformers' ASTForAudioClassification
    # before "vit": a config-less DINOv2 state dict also has ViT's patch-embedding key (find_by_keys takes the first)
    "dinov2": dinov2.HF,  # transformers' Dinov2Model; by key also facebookresearch/dinov2's register / ViT-g files
    "dinov2_with_registers": dinov2.HF,
    "vit_mae": mae.HF,  # ViTMAEForPreTraining; before "vit", whose marker key its encoder also has
    "vit": vit.HF,
    "deit": vit.HF,  # the same weights layout; `vit_model_for` picks the distilled variants for it
    "swin": swin.HF,
    "cvt": cvt.HF,
    "convnext": convnext.HF,
    "resnet": resnet.HF,
    "clip": clip.HF,  # transformers' CLIPModel; by key also openai/CLIP's and open_clip's ViT state dicts
    "vivit": video.VIVIT_HF,  # VivitForVideoClassification / VivitModel
    "timesformer": video.TIMESFORMER_HF,  # TimesformerForVideoClassification / TimesformerModel
}


def find_by_model_type(model_type: str | None) -> HfConverter | None:
    return HF_CONVERTERS.get(model_type or "")


def find_by_family(family: str) -> HfConverter | None:
    """The converter of a vitlab family (the one that writes it back as a transformers checkpoint)."""
    return next((c for c in HF_CONVERTERS.values() if c.family == family), None)


def find_by_keys(state: dict[str, torch.Tensor]) -> HfConverter | None:
    """The converter whose marker key the state dict has (a transformers state dict without its config.json)."""
    return next((c for c in HF_CONVERTERS.values() if c.matches(state)), None)
