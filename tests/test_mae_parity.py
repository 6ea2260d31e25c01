"""MAE against transformers' ViTMAEForPreTraining: random weights saved -> loaded through vitlab -> the same noise
gives the same mask, ids_restore, loss and predicted pixels (fp32, within 1e-4); parameter counts equal."""

from __future__ import annotations

import pytest
import torch

import vitlab
from vitlab.losses.mae import masked_mse

transformers = pytest.importorskip("transformers")

SMALL = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=16, patch_size=4,
    decoder_hidden_size=16, decoder_num_hidden_layers=2, decoder_num_attention_heads=2, decoder_intermediate_size=48,
)  # fmt: skip


def _hf_mae(**kw):
    torch.manual_seed(0)
    model = transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(**{**SMALL, **kw})).eval()
    with torch.no_grad():  # HF zero-initialises biases, LayerNorms are identity: perturb so every weight matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("norm_pix_loss, num_channels", [(False, 3), (True, 3), (True, 1)])
def test_mae_matches_transformers(tmp_path, norm_pix_loss, num_channels):
    ref = _hf_mae(norm_pix_loss=norm_pix_loss, num_channels=num_channels)
    ref.save_pretrained(tmp_path)
    ours = vitlab.load_checkpoint(tmp_path).eval()
    assert ours.model_name == "mae_vit_base_patch16"  # the nearest variant, the config's sizes as overrides
    assert ours.cfg.norm_pix_loss == norm_pix_loss and ours.cfg.in_chans == num_channels
    assert ours.cfg.decoder_embed_dim == 16 and ours.cfg.decoder_mlp_ratio == 3.0
    x = torch.randn(3, num_channels, 16, 16)
    noise = torch.rand(3, 16)
    with torch.no_grad():
        expected = ref(pixel_values=x, noise=noise)
        got = ours(x, noise=noise)
        loss = masked_mse(pred=got.pred, target=ours.target(x), mask=got.mask)
    assert torch.equal(got.mask, expected.mask) and torch.equal(got.ids_restore, expected.ids_restore)
    assert got.mask.sum(1).tolist() == [12.0] * 3  # int(16 * 0.25) = 4 visible
    assert (got.pred - expected.logits).abs().max().item() < 1e-4
    assert abs(loss.item() - expected.loss.item()) < 1e-4
    # reconstructions: unpatchify agrees with transformers' on the predicted pixels
    torch.testing.assert_close(ours.unpatchify(got.pred), ref.unpatchify(expected.logits), atol=1e-4, rtol=0)


def test_position_tables_are_maes_sincos():
    from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

    ours = vitlab.create_model("mae_vit_base_patch16", **_our_small())
    for got, D in ((ours.encoder.pos_embed, 32), (ours.decoder_pos_embed, 16)):
        table = build_2d_sinusoidal_position_embedding(4, 4, D, cls_token=True)
        # transformers rotates the halves to the layout MAE's checkpoints hold ([w | h]), as ViTMAE's init does
        table = torch.cat([table[:, D // 2 :], table[:, : D // 2]], dim=1)
        torch.testing.assert_close(got[0], table, atol=1e-6, rtol=0)
        assert not got.requires_grad


def _our_small() -> dict:
    return dict(
        img_size=16, encoder_args=dict(embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, patch_size=4),
        decoder_embed_dim=16, decoder_depth=2, decoder_num_heads=2, decoder_mlp_ratio=3.0,
    )  # fmt: skip


@pytest.mark.parametrize(
    "name, hf",
    [
        ("mae_vit_base_patch16", {}),
        ("mae_vit_large_patch16", dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                       intermediate_size=4096)),
        ("mae_vit_huge_patch14", dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                                      intermediate_size=5120, patch_size=14)),
    ],
)  # fmt: skip
def test_parameter_counts_equal_transformers(name, hf):
    with torch.device("meta"):
        ref = transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(**hf))
        ours = vitlab.create_model(name)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in ref.parameters())
    if name == "mae_vit_base_patch16":
        assert count == 111_907_840


def test_export_to_transformers_round_trip(tmp_path):
    from vitlab.export import export_model

    ours = vitlab.create_model("mae_vit_micro_patch4_28", qkv_bias=True).eval()
    export_model(ours, "hf", tmp_path / "hf")
    ref = transformers.ViTMAEForPreTraining.from_pretrained(tmp_path / "hf").eval()
    x, noise = torch.randn(2, 1, 28, 28), torch.rand(2, 49)
    with torch.no_grad():
        expected, got = ref(pixel_values=x, noise=noise), ours(x, noise=noise)
    assert torch.equal(got.mask, expected.mask)
    assert (got.pred - expected.logits).abs().max().item() < 1e-4


def test_transformers_mae_encoder_loads_into_a_vit(tmp_path):
    """The fine-tuning path: a ViTMAEForPreTraining directory's encoder as a classifier's trunk equals transformers'
    encoder on every patch (mask ratio 0 and sorted noise keep every patch in order)."""
    ref = _hf_mae(mask_ratio=0.0)
    ref.save_pretrained(tmp_path)
    vit = vitlab.create_model("vit_base_patch16_224", pretrained=tmp_path, num_classes=3).eval()
    assert vit.cfg.embed_dim == 32 and vit.cfg.img_size == 16 and vit.num_classes == 3
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = ref.vit(pixel_values=x, noise=torch.arange(16.0).expand(2, 16)).last_hidden_state
        got = vit.forward_features(x)
    assert (got - expected).abs().max().item() < 1e-4
