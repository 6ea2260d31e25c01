"""The MAE model: the encoder's token-level entry, encoder on visible patches only, loss on masked patches only."""

from __future__ import annotations

import pytest
import torch

import vitlab
from vitlab.losses.mae import masked_mse


@pytest.mark.parametrize("name", ["vit_micro_patch4_8", "deit_micro_distilled_patch4_8", "vit_mini_patch4_32"])
def test_token_entry_equals_forward_features(name):
    torch.manual_seed(0)
    m = vitlab.create_model(name, depth=2).eval()
    x = torch.randn(2, m.in_chans, m.cfg.img_size, m.cfg.img_size)
    with torch.no_grad():
        tokens = m.embed_patches(x)
        N = tokens.shape[1]
        full = m.forward_tokens(tokens)
        torch.testing.assert_close(full, m.forward_features(x))
        keep = torch.arange(N).expand(2, N)  # every patch, in order, as an index: the same
        torch.testing.assert_close(m.forward_tokens(tokens, keep), full)
        sub = torch.tensor([[0, 2], [3, 1]])
        assert m.forward_tokens(tokens, sub).shape == (2, m.num_prefix_tokens + 2, m.num_features)


def test_cpvt_refuses_the_token_entry():
    m = vitlab.create_model("cpvt_micro_patch4_8")
    with pytest.raises(ValueError, match="whole patch grid"):
        m.forward_tokens(m.embed_patches(torch.randn(1, 1, 8, 8)))
    with pytest.raises(vitlab.errors.ConfigError, match="token-level entry"):
        vitlab.create_model("mae_vit_micro_patch2_8", encoder="cpvt_micro_patch4_8", encoder_args={})


def test_encoder_sees_only_the_visible_patches():
    torch.manual_seed(0)
    m = vitlab.create_model("mae_vit_micro_patch2_8").eval()
    x = torch.randn(2, 1, 8, 8)
    noise = torch.rand(2, 16)
    with torch.no_grad():
        out = m(x, noise)
        changed = x.clone()
        masked = m.unpatchify(out.mask[:, :, None].expand(-1, -1, 4)).bool()  # (B, 1, H, W) pixels of masked patches
        changed[masked] = 50.0
        again = m(changed, noise)
        assert torch.equal(again.latent, out.latent) and torch.equal(again.pred, out.pred)
        changed = x.clone()
        changed[~masked] += 1.0
        assert not torch.allclose(m(changed, noise).latent, out.latent)
    assert out.latent.shape == (2, 1 + 4, 64) and out.pred.shape == (2, 16, 4)


def test_loss_comes_from_masked_patches_only_and_trains():
    torch.manual_seed(0)
    m = vitlab.create_model("mae_vit_micro_patch2_8")
    x = torch.randn(4, 1, 8, 8)
    noise = torch.rand(4, 16)
    out = m(x, noise)
    loss = masked_mse(pred=out.pred, target=m.target(x), mask=out.mask)
    (grad,) = torch.autograd.grad(loss, out.pred, retain_graph=True)
    assert torch.all(grad[out.mask == 0] == 0) and torch.any(grad[out.mask == 1] != 0)
    loss.backward()
    assert m.encoder.pos_embed.grad is None and m.decoder_pos_embed.grad is None  # fixed tables
    assert m.mask_token.grad is not None and m.encoder.blocks[0].attn.qkv.weight.grad is not None
    assert m.encoder.cls_token.grad is not None


def test_norm_pix_target_by_hand():
    m = vitlab.create_model("mae_vit_micro_patch2_8", norm_pix_loss=True)
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 0, :2] = torch.tensor([1.0, 3.0])  # patch 0 = [1, 3, 0, 0]: mean 1, unbiased var 2
    t = m.target(x)
    expected = (torch.tensor([1.0, 3.0, 0.0, 0.0]) - 1.0) / (2.0 + 1e-6) ** 0.5
    torch.testing.assert_close(t[0, 0], expected)
    assert torch.all(t[0, 1:] == 0)
    # the picture path gives the true patch's mean and std back
    torch.testing.assert_close(m.reconstruct(x, t), x, atol=1e-5, rtol=0)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    m = vitlab.create_model("mae_vit_micro_patch4_28").eval()
    vitlab.save_checkpoint(m, tmp_path / "m.safetensors")
    back = vitlab.load_checkpoint(tmp_path / "m.safetensors").eval()
    assert back.cfg == m.cfg
    x, noise = torch.randn(2, 1, 28, 28), torch.rand(2, 49)
    with torch.no_grad():
        assert torch.equal(back(x, noise).pred, m(x, noise).pred)


def test_classifier_loads_the_encoder_of_an_mae_checkpoint(tmp_path):
    torch.manual_seed(0)
    mae = vitlab.create_model("mae_vit_micro_patch4_28").eval()
    vitlab.save_checkpoint(mae, tmp_path / "mae.safetensors")
    clf = vitlab.create_model("vit_micro_patch4_8", pretrained=tmp_path / "mae.safetensors", num_classes=10).eval()
    assert clf.cfg.img_size == 28 and clf.cfg.in_chans == 1 and clf.num_classes == 10
    assert clf.pos_embed.requires_grad  # fine-tuning trains the table MAE kept fixed
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(clf.forward_features(x), mae.encoder.forward_features(x))
    # as for any checkpoint, its architecture applies first: another ViT name gives the encoder's sizes
    other = vitlab.create_model("vit_mini_patch4_32", pretrained=tmp_path / "mae.safetensors", num_classes=10)
    assert other.cfg.embed_dim == 64 and other.cfg.depth == 4
    with pytest.raises(vitlab.errors.CheckpointError, match="use --model vit_micro_patch4_8"):
        vitlab.create_model("swin_tiny_patch4_window7_224", pretrained=tmp_path / "mae.safetensors")


def test_config_errors_are_clear():
    with pytest.raises(vitlab.errors.ConfigError, match="mask_ratio"):
        vitlab.create_model("mae_vit_micro_patch2_8", mask_ratio=1.0)
    with pytest.raises(vitlab.errors.ConfigError, match="encoder_args may not set img_size"):
        vitlab.create_model("mae_vit_micro_patch2_8", encoder_args={"img_size": 16})
    with pytest.raises(ValueError, match="noise must be"):
        vitlab.create_model("mae_vit_micro_patch2_8")(torch.randn(1, 1, 8, 8), torch.rand(1, 15))
