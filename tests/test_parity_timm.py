"""Parity with timm (skipped where timm is not importable: it needs torchvision)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import vitlab

timm = pytest.importorskip("timm")

# name -> input side: token-grid models need their own size; convolutional ones run at any.
MODELS = {
    "vit_tiny_patch16_224": 224,
    "deit_tiny_distilled_patch16_224": 224,
    "vit_small_patch32_224": 224,
    "vit_base_r50_s16_224": 224,
    "swin_tiny_patch4_window7_224": 224,
    "mixer_b16_224": 224,
    "convnext_tiny": 96,
    "resnet50": 96,
    "resnet18": 96,
}


@pytest.mark.parametrize("name,size", MODELS.items())
def test_timm_state_dict_logits_match(tmp_path, name, size):
    ref = timm.create_model(name, pretrained=False, num_classes=10).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "w.safetensors")
    ours = vitlab.create_model(name, pretrained=tmp_path / "w.safetensors", num_classes=10).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max().item() < 1e-4
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
