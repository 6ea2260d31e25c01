"""Initialising video models from an image ViT (ViViT sec. 3.4; TimeSformer's reference initialisation)."""

from __future__ import annotations

import pytest
import torch

import vitlab
from tests.conftest import randomise_weights
from vitlab.errors import CheckpointError, ConfigError
from vitlab.models.inflate import inflate_patch_filter
from vitlab.weights.vit import convert_vit


def _image_vit(tmp_path, **kw):
    vit = vitlab.create_model("vit_micro_patch4_16", in_chans=3, num_classes=6, **kw).eval()
    randomise_weights(vit)
    return vit, vitlab.save_checkpoint(vit, tmp_path / "vit.safetensors")


def test_inflate_patch_filter_by_hand():
    w = torch.arange(8.0).reshape(2, 1, 2, 2)
    central = inflate_patch_filter(w, 3, "central")
    assert central.shape == (2, 1, 3, 2, 2)
    assert torch.equal(central[:, :, 1], w) and not central[:, :, [0, 2]].any()
    avg = inflate_patch_filter(w, 4, "average")
    torch.testing.assert_close(avg.sum(dim=2), w)
    torch.testing.assert_close(avg[:, :, 0], w / 4)


@pytest.mark.parametrize("mode", ["central", "average"])
def test_inflated_tubelets_on_a_static_clip_equal_the_2d_patch_embedding(tmp_path, mode):
    vit, path = _image_vit(tmp_path)
    m = vitlab.create_model("vivit_micro_patch4x2_16", pretrained=path, inflate=mode).eval()
    frame = torch.randn(2, 3, 16, 16)
    static = frame[:, None].expand(-1, m.cfg.num_frames, -1, -1, -1)
    with torch.no_grad():
        tokens = m.patch_embed(static)  # (B, T'*P, D)
        want = vit.patch_embed(frame)  # (B, P, D)
    T = m.cfg.num_frames // m.cfg.tubelet_t
    torch.testing.assert_close(tokens, want.repeat(1, T, 1), atol=1e-5, rtol=1e-5)
    # the position table: the image's spatial rows repeated for every temporal index
    torch.testing.assert_close(m.pos_embed[:, 1:], vit.pos_embed[:, 1:].repeat(1, T, 1))


@pytest.mark.parametrize("name", ["timesformer_micro_patch4_16", "vivit_micro_fe_patch4x2_16"])
def test_inflated_models_start_from_the_image_vit(tmp_path, name):
    vit, path = _image_vit(tmp_path, depth=3 if "fe" in name else 4)
    m = vitlab.create_model(name, pretrained=path).eval()
    frame = torch.randn(2, 3, 16, 16)
    static = frame[:, None].expand(-1, m.cfg.num_frames, -1, -1, -1)
    with torch.no_grad():
        if "timesformer" in name:  # temporal_fc = 0, time table = 0: every block is the ViT block on each frame
            torch.testing.assert_close(m(static), vit(frame), atol=1e-4, rtol=1e-4)
        else:  # model 2: the spatial encoder is the ViT (its class token per frame), the temporal one is new
            feats = m.forward_intermediates(static, indices=[2], return_prefix_tokens=True, intermediates_only=True)
            cls = vit.forward_intermediates(frame, indices=[2], return_prefix_tokens=True, intermediates_only=True)
            torch.testing.assert_close(feats[0][1][:: m.t_tokens, 0], cls[0][1][:, 0], atol=1e-5, rtol=1e-5)


def test_inflation_refuses_a_vit_of_another_size(tmp_path):
    _, path = _image_vit(tmp_path, embed_dim=32)
    with pytest.raises(CheckpointError, match="patch embedding"):
        vitlab.create_model("vivit_micro_patch4x2_16", pretrained=path)
    _, path = _image_vit(tmp_path, depth=2)
    with pytest.raises(CheckpointError, match="2 blocks"):
        vitlab.create_model("timesformer_micro_patch4_16", pretrained=path)
    with pytest.raises(ConfigError, match="inflate='middle'"):
        vitlab.create_model("timesformer_micro_patch4_16", pretrained=path, inflate="middle")


def test_a_transformers_vit_directory_inflates(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
                                 image_size=16, patch_size=4, num_labels=3)  # fmt: skip
    ref = transformers.ViTForImageClassification(cfg)
    randomise_weights(ref)
    ref.save_pretrained(tmp_path)
    m = vitlab.create_model("timesformer_micro_patch4_16", pretrained=tmp_path, inflate="average")
    w = ref.vit.embeddings.patch_embeddings.projection.weight
    torch.testing.assert_close(m.patch_embed.proj.weight, w)
    image = convert_vit(ref.state_dict())  # the ViT's weights in vitlab's names
    torch.testing.assert_close(m.blocks[1].temporal_attn.proj.weight, image["blocks.1.attn.proj.weight"])
    assert m.num_classes == 6  # the video variant's head, not the image classifier's 3 classes
