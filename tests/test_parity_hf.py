"""Parity with Hugging Face transformers: random-initialised reference -> save_pretrained -> vitlab -> same logits."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import vitlab

transformers = pytest.importorskip("transformers")

SMALL = dict(
    hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256, image_size=32, patch_size=8
)


def _hf_vit(num_labels=5, **kw):
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(**{**SMALL, **kw}, num_labels=num_labels)
    return transformers.ViTForImageClassification(cfg).eval()


def _hf_deit(num_labels=5):
    torch.manual_seed(0)
    cfg = transformers.DeiTConfig(**SMALL, num_labels=num_labels)
    return transformers.DeiTForImageClassificationWithTeacher(cfg).eval()


def _randomise(model):
    # HF zero-initialises biases and sets LayerNorm to identity: perturb everything so every weight matters.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("num_channels", [3, 1])
def test_vit_logits_match(tmp_path, num_channels):
    ref = _randomise(_hf_vit(num_channels=num_channels))
    ref.save_pretrained(tmp_path)
    ours = vitlab.create_model("vit_tiny_patch16_224", pretrained=tmp_path).eval()
    assert ours.cfg.norm_eps == 1e-12 and ours.cfg.embed_dim == 64 and ours.cfg.in_chans == num_channels
    x = torch.randn(4, num_channels, 32, 32)
    with torch.no_grad():
        expected = ref(pixel_values=x).logits
        got = ours(x)
    assert (got - expected).abs().max().item() < 1e-4


def test_deit_distilled_logits_match(tmp_path):
    ref = _randomise(_hf_deit())
    ref.save_pretrained(tmp_path)
    ours = vitlab.create_model("deit_tiny_distilled_patch16_224", pretrained=tmp_path).eval()
    assert ours.cfg.distilled
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out = ref(pixel_values=x)
        both = ours.forward_distill(x)
        got = ours(x)
    assert (got - out.logits).abs().max().item() < 1e-4
    assert (both.cls - out.cls_logits).abs().max().item() < 1e-4
    assert (both.dist - out.distillation_logits).abs().max().item() < 1e-4


def test_vit_features_match_transformers5_names(tmp_path):
    """A state dict with transformers 5 module names (q_proj/k_proj/v_proj, layers.N) loads too."""
    ref = _randomise(_hf_vit())
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "hf5.safetensors")
    assert any(".q_proj." in k for k in ref.state_dict())
    ours = vitlab.create_model(
        "vit_tiny_patch16_224", pretrained=tmp_path / "hf5.safetensors", num_classes=5,
        embed_dim=64, depth=3, num_heads=4, img_size=32, patch_size=8, norm_eps=1e-12,
    ).eval()  # fmt: skip
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (ours(x) - ref(pixel_values=x).logits).abs().max().item() < 1e-4


def test_vit_new_resolution_matches_hf_interpolation(tmp_path):
    """img_size=48 resamples the 4x4 position grid to 6x6 bicubically, as HF's interpolate_pos_encoding does."""
    ref = _randomise(_hf_vit())
    ref.save_pretrained(tmp_path)
    ours = vitlab.create_model("vit_tiny_patch16_224", pretrained=tmp_path, img_size=48).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expected = ref(pixel_values=x, interpolate_pos_encoding=True).logits
        got = ours(x)
    assert (got - expected).abs().max().item() < 1e-4


def test_class_names_come_from_config(tmp_path):
    ref = _hf_vit(num_labels=3)
    ref.config.id2label = {0: "ant", 1: "bee", 2: "wasp"}
    ref.save_pretrained(tmp_path)
    assert vitlab.create_model("vit_tiny_patch16_224", pretrained=tmp_path).cfg.labels == ("ant", "bee", "wasp")
    # a new head drops the names and is re-initialised
    m = vitlab.create_model("vit_tiny_patch16_224", pretrained=tmp_path, num_classes=7)
    assert m.cfg.labels == () and m.num_classes == 7 and m.head.weight.abs().sum() == 0
