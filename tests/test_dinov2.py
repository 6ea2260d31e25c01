"""DINOv2 / DINO backbones: parity with transformers' Dinov2Model and Dinov2WithRegistersModel on random weights at
several input sizes, parameter counts equal to transformers' for ViT-S/B/L/g, the official repository's names."""

from __future__ import annotations

import re

import pytest
import torch

import vitlab
from vitlab.errors import CheckpointError
from vitlab.models.vit import DINOV2_VARIANTS
from vitlab.weights.dinov2 import DINOV2_HF_VARIANTS, dinov2_model_for
from vitlab.weights.io import write_tensors

transformers = pytest.importorskip("transformers")

SMALL = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, image_size=56, patch_size=14)


def _hf(registers: bool = False, **kw):
    torch.manual_seed(0)
    cfg = {**SMALL, "layerscale_value": 0.5, **kw}
    if registers:
        model = transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(**cfg))
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**cfg))
    with torch.no_grad():  # every weight matters: LayerScale, registers and the zero-initialised biases too
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize(
    "kind", [dict(), dict(registers=True, num_register_tokens=4), dict(use_swiglu_ffn=True)], ids=["v2", "reg4", "g"]
)
def test_matches_transformers_at_two_resolutions(tmp_path, kind):
    ref = _hf(**kind)
    ref.save_pretrained(tmp_path)
    ours = vitlab.load_checkpoint(tmp_path).eval()
    assert ours.model_name.endswith("reg4_dinov2" if kind.get("registers") else "_dinov2")
    # the table's own 4x4 grid, a larger square one (upsampled) and a non-square smaller one (antialiased for reg4)
    for hw in ((56, 56), (98, 98), (42, 70)):
        x = torch.randn(2, 3, *hw)
        with torch.no_grad():
            expected = ref(pixel_values=x).last_hidden_state
            got = ours.forward_features(x)
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() < 1e-4, hw


def test_create_model_by_name_resamples_nothing_and_keeps_the_table(tmp_path):
    ref = _hf(registers=True, num_register_tokens=4)
    ref.save_pretrained(tmp_path)
    m = vitlab.create_model("vit_base_patch14_reg4_dinov2", pretrained=tmp_path)  # the directory's sizes apply
    assert m.pos_embed.shape == (1, 17, 48) and m.reg_token.shape == (1, 4, 48)
    assert m.num_prefix_tokens == 5 and not m.mask_token.requires_grad


def test_parameter_counts_equal_transformers():
    sizes = {"small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16), "giant": (1536, 40, 24)}
    for size, (D, L, H) in sizes.items():
        for reg in (False, True):
            kw = dict(hidden_size=D, num_hidden_layers=L, num_attention_heads=H, image_size=518, patch_size=14,
                      use_swiglu_ffn=size == "giant")  # fmt: skip
            name = f"vit_{size}_patch14_{'reg4_' if reg else ''}dinov2"
            with torch.device("meta"):
                if reg:
                    ref = transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(**kw))
                else:
                    ref = transformers.Dinov2Model(transformers.Dinov2Config(**kw))
                ours = vitlab.create_model(name)
            assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters()), name
    assert sum(p.numel() for p in vitlab.create_model("vit_small_patch14_dinov2").parameters()) == 22_056_576


def test_official_state_dict_names_load(tmp_path):
    ref = vitlab.create_model("vit_giant_patch14_reg4_dinov2", embed_dim=48, depth=2, num_heads=3, img_size=56).eval()
    official = {}
    for k, v in ref.state_dict().items():
        k = k.replace("reg_token", "register_tokens").replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")
        official[re.sub(r"^blocks\.(\d+)\.", r"blocks.0.\1.", k)] = v  # one block chunk, global indices
    write_tensors(tmp_path / "dinov2.safetensors", official)
    m = vitlab.create_model(
        "vit_giant_patch14_reg4_dinov2", pretrained=tmp_path / "dinov2.safetensors", embed_dim=48, depth=2,
        num_heads=3, img_size=56,
    ).eval()  # fmt: skip
    x = torch.randn(1, 3, 70, 42)
    assert torch.equal(m.forward_features(x), ref.forward_features(x))


def test_classification_checkpoint_is_refused_with_the_fix(tmp_path):
    torch.manual_seed(0)
    transformers.Dinov2ForImageClassification(transformers.Dinov2Config(**SMALL, num_labels=3)).save_pretrained(
        tmp_path
    )
    with pytest.raises(CheckpointError, match="Dinov2Model"):
        vitlab.load_checkpoint(tmp_path)


def test_variant_tables_agree():
    assert set(DINOV2_HF_VARIANTS) == set(DINOV2_VARIANTS)
    for name, fields in DINOV2_HF_VARIANTS.items():
        with torch.device("meta"):
            cfg = vitlab.create_model(name).cfg
        assert {k: getattr(cfg, k) for k in fields} == fields, name
    config = dict(model_type="dinov2", hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  image_size=518, patch_size=14, layerscale_value=1.0)  # fmt: skip
    assert dinov2_model_for(config) == ("vit_large_patch14_dinov2", {"norm_eps": 1e-6, "init_values": 1.0})


def test_dino_v1_tagged_names():
    assert {"vit_small_patch16_224.dino", "vit_base_patch16_224.dino"} <= set(vitlab.list_models("*.dino"))
    m = vitlab.create_model("vit_small_patch16_224.dino", depth=1).eval()
    assert m.num_classes == 0 and m(torch.randn(1, 3, 96, 64)).shape == (1, 384)  # any multiple of the patch


def test_dino_v1_transformers_vitmodel_matches_at_two_resolutions(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=192,
                                 image_size=32, patch_size=8, layer_norm_eps=1e-6)  # fmt: skip
    ref = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ref.save_pretrained(tmp_path)
    ours = vitlab.create_model("vit_small_patch16_224.dino", pretrained=tmp_path).eval()  # the directory's sizes
    assert ours.cfg.dynamic_img_size and ours.num_classes == 0
    for hw in ((32, 32), (48, 40)):
        x = torch.randn(2, 3, *hw)
        with torch.no_grad():
            expected = ref(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state
        assert (ours.forward_features(x) - expected).abs().max().item() < 1e-4, hw
