"""Parity with Hugging Face transformers for the convolutional families (ConvNeXt, ResNet)."""

from __future__ import annotations

import pytest
import torch

import vitlab
from tests.conftest import randomise_weights
from vitlab.errors import CheckpointError

transformers = pytest.importorskip("transformers")


def _compare(ref, ours, x, tol=1e-4):
    with torch.no_grad():
        expected = ref(pixel_values=x).logits
        got = ours.eval()(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < tol


def test_convnext_logits_match(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.ConvNextConfig(
        depths=[1, 2, 1, 1], hidden_sizes=[16, 32, 48, 64], num_labels=6, layer_scale_init_value=0.5, image_size=64
    )
    ref = randomise_weights(transformers.ConvNextForImageClassification(cfg))
    ref.save_pretrained(tmp_path)
    ours = vitlab.create_model("convnext_tiny", pretrained=tmp_path)
    assert ours.cfg.dims == (16, 32, 48, 64) and ours.cfg.head_norm_eps == 1e-12
    _compare(ref, ours, torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("layer_type,name", [("basic", "resnet18"), ("bottleneck", "resnet50")])
def test_resnet_logits_match(tmp_path, layer_type, name):
    torch.manual_seed(0)
    cfg = transformers.ResNetConfig(
        depths=[1, 2, 1, 1], hidden_sizes=[16, 32, 64, 128] if layer_type == "bottleneck" else [8, 16, 32, 64],
        embedding_size=8, layer_type=layer_type, num_labels=5,
    )  # fmt: skip
    ref = randomise_weights(transformers.ResNetForImageClassification(cfg))
    ref.save_pretrained(tmp_path)
    ours = vitlab.create_model(name, pretrained=tmp_path)
    assert ours.cfg.layers == (1, 2, 1, 1) and ours.num_classes == 5
    _compare(ref, ours, torch.randn(2, 3, 64, 64))
    # as a feature backbone: the last stage output equals HF's last hidden state
    with torch.no_grad():
        hf_last = ref.resnet(pixel_values=torch.ones(1, 3, 64, 64)).last_hidden_state
        ours_last = ours.forward_intermediates(torch.ones(1, 3, 64, 64), indices=1, intermediates_only=True)[0]
    assert (hf_last - ours_last).abs().max().item() < 1e-4


def test_family_mismatch_is_refused(tmp_path):
    transformers.ConvNextForImageClassification(transformers.ConvNextConfig(depths=[1, 1, 1, 1])).save_pretrained(
        tmp_path
    )
    with pytest.raises(CheckpointError, match="convnext checkpoint cannot be loaded into 'resnet50'"):
        vitlab.create_model("resnet50", pretrained=tmp_path)


@pytest.mark.parametrize("image_size,window", [(32, 4), (64, 4), (48, 4)])
def test_swin_logits_match(tmp_path, image_size, window):
    """Maps 16/8/4 (the last equals the window: no shift), 32/16/8, and 24/12/6 (6 is padded to 8)."""
    torch.manual_seed(0)
    cfg = transformers.SwinConfig(
        image_size=image_size, patch_size=2, embed_dim=16, depths=[2, 2, 2], num_heads=[2, 4, 8],
        window_size=window, num_labels=4,
    )  # fmt: skip
    ref = randomise_weights(transformers.SwinForImageClassification(cfg))
    ref.save_pretrained(tmp_path)
    ours = vitlab.create_model("swin_tiny_patch4_window7_224", pretrained=tmp_path)
    assert ours.cfg.depths == (2, 2, 2) and ours.cfg.window_size == window
    _compare(ref, ours, torch.randn(2, 3, image_size, image_size))


def test_cvt_logits_match(tmp_path):
    # depth[i] > i: HF's CvtStage indexes its per-block drop-path list by the stage number.
    torch.manual_seed(0)
    cfg = transformers.CvtConfig(
        embed_dim=[16, 32, 48], num_heads=[1, 2, 3], depth=[1, 2, 3], num_labels=5, drop_path_rate=[0.0, 0.0, 0.0]
    )
    ref = randomise_weights(transformers.CvtForImageClassification(cfg))
    ref.save_pretrained(tmp_path)
    ours = vitlab.create_model("cvt_13_224", pretrained=tmp_path)
    assert ours.cfg.depths == (1, 2, 3) and ours.num_classes == 5
    _compare(ref, ours, torch.randn(2, 3, 64, 64))
    _compare(ref, ours, torch.randn(1, 3, 96, 80))  # no position embedding: any size runs


def test_cvt_class_token_only_in_last_stage():
    m = vitlab.create_model("cvt_13_224")
    assert [s.cls_token is not None for s in m.stages] == [False, False, True]
    assert [s.blocks[0].attn.conv_proj_k.conv.stride for s in m.stages] == [(2, 2)] * 3
    assert [s.blocks[0].attn.conv_proj_q.conv.stride for s in m.stages] == [(1, 1)] * 3
