"""Parity with timm (skipped where timm is not importable: it needs torchvision)."""

from __future__ import annotations

import math

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


# ----- timm's model contract on shared weights: forward_intermediates, features_only, unpooled output, cfg ---------
CONTRACT = {
    "vit_small_patch16_224": 224,
    "swin_tiny_patch4_window7_224": 224,
    "convnext_tiny": 96,
    "resnet50": 96,
}


def _pair(tmp_path, name, **kw):
    """timm's model with perturbed weights and vitlab's loaded from them, both in eval mode."""
    ref = timm.create_model(name, pretrained=False, **kw).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "w.safetensors")
    ours = vitlab.create_model(name, pretrained=tmp_path / "w.safetensors", **kw).eval()
    return ref, ours


def _close(a, b):
    if isinstance(a, tuple | list):
        assert isinstance(b, tuple | list) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _close(x, y)
    else:
        assert a.shape == b.shape, (a.shape, b.shape)
        assert (a - b).abs().max().item() < 1e-4


@pytest.mark.parametrize("name,size", CONTRACT.items())
def test_forward_intermediates_match_timm(tmp_path, name, size):
    ref, ours = _pair(tmp_path, name, num_classes=10)
    x = torch.randn(2, 3, size, size)
    vit = name.startswith("vit")
    calls = [
        dict(),
        dict(indices=2),
        dict(indices=[0, -1], norm=True),
        dict(indices=1, stop_early=True, intermediates_only=True),
        dict(indices=[1], intermediates_only=True),
    ]
    if vit:  # token models: the NLC layout and the class token returned beside the grid
        calls += [dict(indices=3, output_fmt="NLC"), dict(indices=2, return_prefix_tokens=True, norm=True)]
    with torch.no_grad():
        for kw in calls:
            _close(ours.forward_intermediates(x, **kw), ref.forward_intermediates(x, **kw))
    assert ours.feature_info == ref.feature_info


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_dilated_resnet_matches_timm(tmp_path, name, output_stride):
    """`output_stride` (DETR-DC5's backbone is resnet50 at 16): dilation instead of stride, as timm's."""
    ref, ours = _pair(tmp_path, name, num_classes=10, output_stride=output_stride)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        _close(ours.forward_intermediates(x), ref.forward_intermediates(x))
    assert ours.feature_info == ref.feature_info


@pytest.mark.parametrize("name,size", CONTRACT.items())
@pytest.mark.parametrize("out_indices", [None, (1, 2)])
@pytest.mark.parametrize("feature_cls", [None, "getter"])
def test_features_only_matches_timm(tmp_path, name, size, out_indices, feature_cls):
    _pair(tmp_path, name)  # writes timm's perturbed weights to w.safetensors
    file = tmp_path / "w.safetensors"
    kw = {k: v for k, v in dict(out_indices=out_indices, feature_cls=feature_cls).items() if v is not None}
    overlay = dict(file=str(file))
    ref = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, features_only=True, **kw)
    ours = vitlab.create_model(name, pretrained=file, features_only=True, **kw)
    ref.eval(), ours.eval()
    assert ours.feature_info.channels() == ref.feature_info.channels()
    assert ours.feature_info.reduction() == ref.feature_info.reduction()
    assert ours.feature_info.module_name() == ref.feature_info.module_name()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        _close(ours(x), ref(x))


@pytest.mark.parametrize("name,size", CONTRACT.items())
def test_unpooled_output_matches_timm(tmp_path, name, size):
    ref, ours = _pair(tmp_path, name, num_classes=0, global_pool="")
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        _close(ours(x), ref(x))
        ref.reset_classifier(0, "avg" if not name.startswith("vit") else "token")
        ours.reset_classifier(0, "avg" if not name.startswith("vit") else "token")
        _close(ours(x), ref(x))
        ref.reset_classifier(0, "")
        ours.reset_classifier(0, "")
        _close(ours(x), ref(x))


CFG_KEYS = ("input_size", "crop_pct", "interpolation", "mean", "std", "num_classes", "first_conv", "classifier")


CFG_MODELS = [*CONTRACT, "vit_base_patch16_384", "deit_base_distilled_patch16_224", "convnext_base"]


@pytest.mark.parametrize("name", CFG_MODELS)
def test_pretrained_cfg_matches_timm(name):
    ref = timm.create_model(name, pretrained=False)
    ours = vitlab.create_model(name)
    for key in CFG_KEYS + ("fixed_input_size", "pool_size"):
        a, b = ours.pretrained_cfg.get(key), ref.pretrained_cfg.get(key)
        if key == "pool_size" and ours.output_fmt == "NLC":
            continue  # a token model's features have no map; timm keeps the patch grid there
        if key == "fixed_input_size":
            a, b = bool(a), bool(b)
        assert (tuple(a) if isinstance(a, list | tuple) else a) == (tuple(b) if isinstance(b, list | tuple) else b), key


@pytest.mark.parametrize("name", ["vit_small_patch16_224", "convnext_base"])
def test_eval_transform_matches_timms(name):
    """timm's eval pipeline (resolve_data_config + create_transform: PIL bicubic resize of the short side to
    224 / crop_pct, centre crop) against vitlab's."""
    from PIL import Image

    from vitlab.data import ImageTransform

    model = vitlab.create_model(name, num_classes=0)
    ref = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    ours = ImageTransform.for_model(model)
    rng = torch.Generator().manual_seed(0)
    short = math.floor(224 / model.pretrained_cfg["crop_pct"])
    # an image whose short side is already the resize target: no resampling, so the crops must be identical
    img = torch.randint(0, 256, (3, short, short + 85), dtype=torch.uint8, generator=rng)
    torch.testing.assert_close(ours(img), ref(Image.fromarray(img.permute(1, 2, 0).numpy())), rtol=0, atol=1e-6)
    # a larger one: resampled (PIL's bicubic kernel is not torch's), still far closer than a crop one pixel off
    small = torch.randint(0, 256, (3, 12, 16), dtype=torch.uint8, generator=rng)
    img = torch.nn.functional.interpolate(small[None].float(), size=(300, 400), mode="bilinear")[0].byte()
    a, b = ours(img), ref(Image.fromarray(img.permute(1, 2, 0).numpy()))
    diff = (a - b).abs().mean().item()
    shifted = (a[:, :, 1:] - b[:, :, :-1]).abs().mean().item()
    assert diff < shifted / 2, (diff, shifted)
