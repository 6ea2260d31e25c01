"""Parity with transformers' video classifiers: random-initialised VivitForVideoClassification and
TimesformerForVideoClassification -> save_pretrained -> vitlab -> the same logits; parameter counts of the base
configs equal transformers' (counted on the meta device)."""

from __future__ import annotations

import pytest
import torch

import vitlab
from vitlab.errors import CheckpointError
from vitlab.weights.video import TIMESFORMER_HF_VARIANTS, VIVIT_HF_VARIANTS

transformers = pytest.importorskip("transformers")

SMALL = dict(image_size=16, num_frames=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=64, num_labels=5)  # fmt: skip


def _randomise(model):
    # transformers zero-initialises biases, the class token and ViViT's position table: perturb everything
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _same_logits(ref, path, B=3):
    ours = vitlab.load_checkpoint(path).eval()
    c = ours.cfg
    x = torch.randn(B, c.num_frames, c.in_chans, c.img_size, c.img_size)
    with torch.no_grad():
        expected = ref(pixel_values=x).logits
        got = ours(x)
    assert (got - expected).abs().max().item() < 1e-4
    return ours


@pytest.mark.parametrize("act", ["gelu_fast", "gelu"])
def test_vivit_logits_match(tmp_path, act):
    cfg = transformers.VivitConfig(**SMALL, tubelet_size=[2, 4, 4], hidden_act=act)
    ref = _randomise(transformers.VivitForVideoClassification(cfg))
    ref.save_pretrained(tmp_path)
    ours = _same_logits(ref, tmp_path)
    assert (
        ours.cfg.tubelet_t == 2
        and ours.cfg.patch_size == 4
        and ours.cfg.act == ("gelu_tanh" if act != "gelu" else "gelu")
    )
    assert ours.num_classes == 5


@pytest.mark.parametrize("attention", ["divided_space_time", "joint_space_time"])
def test_timesformer_logits_match(tmp_path, attention):
    cfg = transformers.TimesformerConfig(**SMALL, patch_size=4, attention_type=attention)
    ref = _randomise(transformers.TimesformerForVideoClassification(cfg))
    ref.save_pretrained(tmp_path)
    ours = _same_logits(ref, tmp_path)
    assert ours.cfg.attention_type == attention


def test_timesformer_space_only_is_refused(tmp_path):
    cfg = transformers.TimesformerConfig(**SMALL, patch_size=4, attention_type="space_only")
    transformers.TimesformerForVideoClassification(cfg).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="space_only"):
        vitlab.load_checkpoint(tmp_path)


def test_base_model_without_head_loads_as_features(tmp_path):
    cfg = transformers.VivitConfig(**SMALL, tubelet_size=[2, 4, 4])
    ref = _randomise(transformers.VivitModel(cfg, add_pooling_layer=False))
    ref.save_pretrained(tmp_path)
    ours = vitlab.load_checkpoint(tmp_path).eval()
    x = torch.randn(2, 4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), ref(pixel_values=x).last_hidden_state, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("hf_cls", "hf_cfg", "name"),
    [
        ("VivitForVideoClassification", dict(), "vivit_base_patch16x2_224"),
        ("TimesformerForVideoClassification", dict(), "timesformer_base_patch16_224"),
        ("TimesformerForVideoClassification", dict(attention_type="joint_space_time"),
         "timesformer_base_joint_patch16_224"),
    ],
)  # fmt: skip
def test_base_parameter_counts_equal_transformers(hf_cls, hf_cfg, name):
    config_cls = transformers.VivitConfig if hf_cls.startswith("Vivit") else transformers.TimesformerConfig
    cfg = config_cls(**hf_cfg, num_labels=400)
    with torch.device("meta"):
        ref = getattr(transformers, hf_cls)(cfg)
        ours = vitlab.create_model(name)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    # the converter names the same registered variant for the default config.json
    conv = vitlab.weights.catalog.find_by_model_type(cfg.model_type)
    picked, overrides = conv.model_for(cfg.to_dict())
    assert picked == name and overrides == {"norm_eps": 1e-6}  # epsilons are always passed on, never decide


def test_converter_variants_match_the_registry():
    for table in (VIVIT_HF_VARIANTS, TIMESFORMER_HF_VARIANTS):
        for name, fields in table.items():
            with torch.device("meta"):
                cfg = vitlab.create_model(name).cfg
            assert {k: getattr(cfg, k) for k in fields} == fields, name
