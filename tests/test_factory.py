"""The factory: self-describing checkpoints rebuild their architecture, headless ones get a new head.

`load_checkpoint(DIR)` on random-initialised transformers models saved with `save_pretrained` (small configs, so
the logits can be compared on CPU), the variant a config.json names (full-size configs: names only), and the
variant tables of the converters checked against the registry.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch
from safetensors.torch import save_file

import vitlab
from tests.conftest import randomise_weights
from vitlab.errors import CheckpointError
from vitlab.registry import get_entry
from vitlab.weights import checkpoint_model_name, convnext, cvt, dinov2, resnet, swin, vit
from vitlab.weights.catalog import HF_CONVERTERS
from vitlab.weights.hf import pick_variant

TABLES = {
    "vit": vit.VIT_VARIANTS,
    "deit": vit.DEIT_VARIANTS,
    "swin": swin.SWIN_VARIANTS,
    "convnext": convnext.CONVNEXT_VARIANTS,
    "resnet": resnet.RESNET_VARIANTS,
    "cvt": cvt.CVT_VARIANTS,
    "dinov2": dinov2.DINOV2_HF_VARIANTS,
}


FIELDS = {  # config.json -> the config fields it fixes, per model_type
    "vit": vit.vit_fields,
    "deit": vit.vit_fields,
    "swin": swin.swin_fields,
    "convnext": convnext.convnext_fields,
    "resnet": resnet.resnet_fields,
    "cvt": cvt.cvt_fields,
}


def _logits_match(ref, ours, x) -> None:
    with torch.no_grad():
        expected = ref(pixel_values=x).logits
        got = ours.eval()(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-4


# ----- the converters' variant tables agree with the registry ---------------------------------------------------------
@pytest.mark.parametrize("table", TABLES, ids=str)
def test_variant_tables_match_registered_configs(table):
    for name, fields in TABLES[table].items():
        with torch.device("meta"):
            cfg = vitlab.create_model(name).cfg
        got = {k: getattr(cfg, k) for k in fields}
        assert got == fields, f"{name}: weights/{table} table says {fields}, models/ registers {got}"


def test_every_plain_variant_is_in_a_table():
    """A variant added to models/ that a transformers config could describe needs its line in a converter's table."""
    listed = {n for t in TABLES.values() for n in t}
    plain = [
        n
        for n in vitlab.list_models(kind="classifier")
        if get_entry(n).family in ("swin", "convnext", "cvt", "resnet")
        or (n.startswith(("vit_", "deit_")) and "_r50_" not in n and (n.startswith("vit_") or "distilled" in n))
    ]
    assert plain and not sorted(set(plain) - listed)


def test_pick_variant_exact_nearest_and_numerics():
    variants = {"base": dict(a=1, b=2), "other": dict(a=3, b=2), "far": dict(a=5, b=5)}
    assert pick_variant(dict(a=3, b=2, eps=0.1), variants, numerics=("eps",)) == ("other", {"eps": 0.1})
    assert pick_variant(dict(a=5, b=4), variants) == ("far", {"b": 4})
    assert pick_variant(dict(a=9, b=9), variants) == ("base", {"a": 9, "b": 9})  # ties go to the base


# ----- full-size configs: the registered variant they name (no weights built) -----------------------------------------
def _full_size_configs():
    T = pytest.importorskip("transformers")
    basic = dict(layer_type="basic", hidden_sizes=[64, 128, 256, 512])
    return [
        (T.ViTConfig(), "vit_base_patch16_224", {"norm_eps": 1e-12}),
        (T.ViTConfig(image_size=384, patch_size=32), "vit_base_patch32_384", {"norm_eps": 1e-12}),
        (T.ViTConfig(hidden_size=384, num_attention_heads=6, intermediate_size=1536), "vit_small_patch16_224", {}),
        (T.ViTConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                     patch_size=14), "vit_large_patch16_224", {"patch_size": 14}),  # no ViT-L/14: the nearest
        (T.DeiTConfig(), "deit_base_distilled_patch16_224", {}),
        (T.DeiTConfig(hidden_size=192, num_attention_heads=3, intermediate_size=768), "deit_tiny_distilled_patch16_224",
         {}),
        (T.SwinConfig(), "swin_tiny_patch4_window7_224", {}),
        (T.SwinConfig(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12, image_size=384),
         "swin_base_patch4_window12_384", {}),
        # swin_micro's last map (2x2) is smaller than its window: transformers keeps the 4x4 window's bias table
        # there, vitlab's window and table shrink to the map, so its weights do not load; the name is checked
        (T.SwinConfig(image_size=32, embed_dim=64, depths=[2, 2, 2], num_heads=[2, 4, 8], window_size=4),
         "swin_micro_patch4_window4_32", {}),
        (T.ConvNextConfig(), "convnext_tiny", {}),
        (T.ConvNextConfig(depths=[3, 3, 27, 3], hidden_sizes=[128, 256, 512, 1024]), "convnext_base", {}),
        (T.ResNetConfig(), "resnet50", {}),
        (T.ResNetConfig(depths=[3, 4, 23, 3]), "resnet101", {}),
        (T.ResNetConfig(depths=[2, 2, 2, 2], **basic), "resnet18", {}),
        (T.ResNetConfig(depths=[3, 4, 6, 3], **basic), "resnet34", {}),
        (T.CvtConfig(), "cvt_13_224", {}),
        (T.CvtConfig(depth=[1, 4, 16]), "cvt_21_224", {}),
    ]  # fmt: skip


def test_full_size_configs_name_their_variant():
    for config, name, extra in _full_size_configs():
        d = config.to_dict()
        got, overrides = HF_CONVERTERS[d["model_type"]].model_for(d)
        assert got == name, f"{type(config).__name__}: {got} instead of {name}"
        assert {k: overrides[k] for k in extra} == extra
        # the name and overrides build the config's architecture exactly
        with torch.device("meta"):
            built = dataclasses.asdict(vitlab.create_model(got, **overrides).cfg)
        want = FIELDS[d["model_type"]](d)
        assert {k: built[k] for k in want} == want


# ----- load_checkpoint on saved transformers directories --------------------------------------------------------------
def _vit_cfg(T, cls, **kw):
    base = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256, image_size=32,
                patch_size=8, num_labels=5)  # fmt: skip
    return cls(**{**base, **kw})


MICRO = dict(num_hidden_layers=4, intermediate_size=128, image_size=8, patch_size=4, num_channels=1)


def test_hf_vit_with_a_registered_variants_sizes(tmp_path):
    T = pytest.importorskip("transformers")
    ref = randomise_weights(T.ViTForImageClassification(_vit_cfg(T, T.ViTConfig, **MICRO)))
    ref.save_pretrained(tmp_path)
    assert checkpoint_model_name(tmp_path) == "vit_micro_patch4_8"
    ours = vitlab.load_checkpoint(tmp_path)
    assert ours.model_name == "vit_micro_patch4_8" and ours.num_classes == 5 and ours.cfg.norm_eps == 1e-12
    _logits_match(ref, ours, torch.randn(3, 1, 8, 8))


def test_hf_directory_normalisation_comes_from_its_image_processor(tmp_path):
    T = pytest.importorskip("transformers")
    T.ViTForImageClassification(_vit_cfg(T, T.ViTConfig)).save_pretrained(tmp_path)
    assert vitlab.load_checkpoint(tmp_path).cfg.mean == (0.5, 0.5, 0.5)  # the ViT variant's own
    imagenet = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])  # facebook/deit-* (as "vit")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(imagenet))
    m = vitlab.load_checkpoint(tmp_path)
    assert m.cfg.mean == (0.485, 0.456, 0.406) and m.cfg.std == (0.229, 0.224, 0.225)


def test_hf_vit_of_an_unregistered_size_loads_as_the_nearest_variant(tmp_path):
    T = pytest.importorskip("transformers")
    ref = randomise_weights(T.ViTForImageClassification(_vit_cfg(T, T.ViTConfig)))
    ref.save_pretrained(tmp_path)
    ours = vitlab.load_checkpoint(tmp_path)
    assert ours.model_name in vit.VIT_VARIANTS and ours.cfg.depth == 3 and ours.cfg.patch_size == 8
    _logits_match(ref, ours, torch.randn(2, 3, 32, 32))
    # overrides apply after the checkpoint's config, as in create_model
    assert vitlab.load_checkpoint(tmp_path, img_size=48).pos_embed.shape == (1, 1 + 36, 64)


@pytest.mark.parametrize("sizes,name", [(MICRO, "deit_micro_distilled_patch4_8"), ({}, None)])
def test_hf_deit_loads_as_a_distilled_variant(tmp_path, sizes, name):
    T = pytest.importorskip("transformers")
    ref = randomise_weights(T.DeiTForImageClassificationWithTeacher(_vit_cfg(T, T.DeiTConfig, **sizes)))
    ref.save_pretrained(tmp_path)
    ours = vitlab.load_checkpoint(tmp_path).eval()
    assert ours.model_name.startswith("deit_") and "_distilled_" in ours.model_name and ours.cfg.distilled
    assert name is None or ours.model_name == name
    _logits_match(ref, ours, torch.randn(2, ref.config.num_channels, ref.config.image_size, ref.config.image_size))


def test_hf_swin_convnext_resnet_cvt_directories(tmp_path):
    T = pytest.importorskip("transformers")
    cases = [
        (T.SwinForImageClassification(T.SwinConfig(
            image_size=32, patch_size=2, embed_dim=16, depths=[2, 2, 2], num_heads=[2, 4, 8], window_size=4,
            num_labels=4)), None, 32),
        (T.ConvNextForImageClassification(T.ConvNextConfig(
            depths=[1, 2, 1, 1], hidden_sizes=[16, 32, 48, 64], num_labels=6, layer_scale_init_value=0.5,
            image_size=64)), None, 64),
        (T.ResNetForImageClassification(T.ResNetConfig(
            depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64], embedding_size=8, layer_type="basic", num_labels=3)),
         None, 64),
        (T.CvtForImageClassification(T.CvtConfig(
            embed_dim=[16, 32, 48], num_heads=[1, 2, 3], depth=[1, 2, 3], num_labels=5,
            drop_path_rate=[0.0, 0.0, 0.0])), None, 64),
    ]  # fmt: skip
    for i, (ref, name, size) in enumerate(cases):
        randomise_weights(ref).save_pretrained(tmp_path / str(i))
        ours = vitlab.load_checkpoint(tmp_path / str(i))
        family = {"swin": "swin", "convnext": "convnext", "resnet": "resnet", "cvt": "cvt"}[ref.config.model_type]
        assert get_entry(ours.model_name).family == family
        assert name is None or ours.model_name == name
        _logits_match(ref, ours, torch.randn(2, 3, size, size))


def test_cli_loader_names_the_model_from_config_json(tmp_path):
    from vitlab.cli.common import load_model

    T = pytest.importorskip("transformers")
    cfg = T.ResNetConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64], embedding_size=8, layer_type="basic")
    T.ResNetForImageClassification(cfg).save_pretrained(tmp_path)
    m = load_model(str(tmp_path), None)  # no registered size: the nearest basic-block ResNet, with the config's sizes
    assert m.model_name == "resnet18" and m.cfg.layers == (1, 1, 1, 1) and m.cfg.widths == (8, 16, 32, 64)


# ----- what is not self-describing, and what does not fit -------------------------------------------------------------
def test_timm_state_dict_is_not_self_describing(tmp_path):
    save_file(vitlab.create_model("vit_micro_patch4_8").state_dict(), tmp_path / "w.safetensors")
    assert checkpoint_model_name(tmp_path / "w.safetensors") is None
    with pytest.raises(CheckpointError, match=r"w.safetensors: .* use create_model\(NAME, pretrained="):
        vitlab.load_checkpoint(tmp_path / "w.safetensors")


def test_unknown_model_type_and_incomplete_config(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(CheckpointError, match="model_type='bert' is not a format vitlab reads"):
        vitlab.load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "vit"}')
    save_file({"x": torch.zeros(1)}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="config.json: no 'hidden_size' entry"):
        vitlab.load_checkpoint(tmp_path)


# ----- headless checkpoints -----------------------------------------------------------------------------------------
def _headless_file(tmp_path, name="vit_micro_patch4_8", drop=()):
    src = vitlab.create_model(name)
    sd = {k: v for k, v in src.state_dict().items() if not k.startswith("head") and k not in drop}
    save_file(sd, tmp_path / "headless.safetensors")
    return src, tmp_path / "headless.safetensors"


def test_headless_checkpoint_gets_a_new_head(tmp_path, caplog):
    src, path = _headless_file(tmp_path)
    with caplog.at_level(logging.WARNING, logger="vitlab"):
        m = vitlab.create_model("vit_micro_patch4_8", pretrained=path, num_classes=3)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no classifier" in warnings[0].message and "head.weight" in warnings[0].message
    assert m.head.weight.shape == (3, 64) and m.head.weight.abs().sum() == 0  # as the model initialises it
    for k, v in src.state_dict().items():
        if not k.startswith("head"):
            torch.testing.assert_close(m.state_dict()[k], v, msg=k)


def test_headless_distilled_checkpoint_gets_both_heads(tmp_path, caplog):
    src, path = _headless_file(tmp_path, "deit_micro_distilled_patch4_8")
    with caplog.at_level(logging.WARNING, logger="vitlab"):
        m = vitlab.create_model("deit_micro_distilled_patch4_8", pretrained=path, num_classes=4)
    assert "head_dist.weight" in caplog.text and m.head_dist.weight.shape == (4, 64)
    torch.testing.assert_close(m.dist_token, src.dist_token)


def test_headless_checkpoint_missing_another_key_still_fails(tmp_path):
    _, path = _headless_file(tmp_path, drop=("norm.weight",))
    with pytest.raises(CheckpointError) as e:
        vitlab.create_model("vit_micro_patch4_8", pretrained=path, num_classes=3)
    assert "missing keys (1): norm.weight" in str(e.value) and "head" not in str(e.value).split("missing keys")[1]


def test_partial_classifier_is_an_error_not_a_new_head(tmp_path):
    sd = vitlab.create_model("vit_micro_patch4_8").state_dict()
    sd.pop("head.bias")
    save_file(sd, tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): head.bias"):
        vitlab.create_model("vit_micro_patch4_8", pretrained=tmp_path / "w.safetensors")


def test_hf_model_without_classifier(tmp_path, caplog):
    T = pytest.importorskip("transformers")
    ref = randomise_weights(T.ViTModel(_vit_cfg(T, T.ViTConfig, **MICRO), add_pooling_layer=True))
    ref.save_pretrained(tmp_path)
    plain = vitlab.load_checkpoint(tmp_path)  # the config's sizes, and no head (num_classes 0)
    assert plain.model_name == "vit_micro_patch4_8" and plain.num_classes == 0
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        ours, theirs = plain.eval().forward_features(x), ref(pixel_values=x).last_hidden_state
    assert (ours - theirs).abs().max().item() < 1e-4
    with caplog.at_level(logging.WARNING, logger="vitlab"):
        m = vitlab.load_checkpoint(tmp_path, num_classes=10)
    assert "no classifier" in caplog.text and m.num_classes == 10 and m(x).shape == (2, 10)
