"""Contract tests over every registered model: the one API all families share."""

from __future__ import annotations

import pytest
import torch

import vitlab
from vitlab.errors import ConfigError, UnknownModelError
from vitlab.registry import get_entry

ALL = vitlab.list_models()


# Per family: the registered architecture with its widths kept, but depth and input shrunk so every name runs on CPU,
# and randomness (dropout, stochastic depth) off so train-mode passes can be compared.
SHRINK = {
    "vit": lambda cfg: dict(depth=2, img_size=cfg.patch_size * 3, drop_path_rate=0.0),
    "convnext": lambda cfg: dict(depths=(1,) * len(cfg.depths), img_size=64, drop_path_rate=0.0),
    "resnet": lambda cfg: dict(layers=(1,) * len(cfg.layers), img_size=64),
    "swin": lambda cfg: dict(
        depths=(2,) + (1,) * (len(cfg.depths) - 1), img_size=cfg.patch_size * 32, drop_path_rate=0.0
    ),  # fmt: skip
    "mixer": lambda cfg: dict(depth=2, img_size=cfg.patch_size * 4, drop_path_rate=0.0),
    "cvt": lambda cfg: dict(depths=(1,) * len(cfg.depths), img_size=64, drop_path_rate=0.0),
    "classic_cnn": lambda cfg: dict(img_size=min(cfg.img_size, 96), dropout=0.0),
}


def small(name: str, **kw):
    with torch.device("meta"):
        full = vitlab.create_model(name)
    shrink = SHRINK[get_entry(name).family](full.cfg)
    return vitlab.create_model(name, **{**shrink, **kw}), full.cfg


def test_registry_lists_required_models():
    required = {
        "vit_tiny_patch16_224", "vit_small_patch16_224", "vit_small_patch32_224", "vit_base_patch8_224",
        "vit_base_patch16_224", "vit_base_patch32_224", "vit_base_patch16_384", "vit_large_patch16_224",
        "vit_large_patch32_224", "vit_huge_patch14_224", "deit_tiny_patch16_224", "deit_small_patch16_224",
        "deit_base_patch16_224", "deit_tiny_distilled_patch16_224", "deit_small_distilled_patch16_224",
        "deit_base_distilled_patch16_224",
    }  # fmt: skip
    assert required <= set(ALL)
    assert vitlab.list_models("deit_*_distilled_*") == sorted(n for n in ALL if "distilled" in n)


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError, match="did you mean vit_base_patch16_224"):
        vitlab.create_model("vit_bse_patch16_224")


def test_unknown_argument_is_named():
    with pytest.raises(ConfigError, match="embed_dimm"):
        vitlab.create_model("vit_micro_patch2_8", embed_dimm=3)


@pytest.mark.parametrize("name", ALL)
def test_full_size_shapes_on_meta(name):
    with torch.device("meta"):
        m = vitlab.create_model(name)
        x = torch.empty(2, m.cfg.in_chans, m.cfg.img_size, m.cfg.img_size)
        assert m(x).shape == (2, m.num_classes)
        assert m.forward_head(m.forward_features(x), pre_logits=True).shape == (2, m.num_features)


@pytest.mark.parametrize("name", ALL)
def test_contract(name, tmp_path):
    m, full_cfg = small(name, num_classes=7)
    C, S = m.cfg.in_chans, m.cfg.img_size
    x = torch.randn(3, C, S, S)

    # forward: shape, finite, eval determinism
    m.eval()
    y = m(x)
    assert y.shape == (3, 7) and torch.isfinite(y).all()
    assert torch.equal(y, m(x))
    assert torch.allclose(m.forward_head(m.forward_features(x)), y)
    assert m.forward_head(m.forward_features(x), pre_logits=True).shape == (3, m.num_features)

    # backward reaches every parameter; heads are zero-initialised so perturb them first
    heads = tuple(f"{h}." for h in m.get_classifier_names())
    for n, p in m.named_parameters():
        if n.startswith(heads):
            torch.nn.init.normal_(p, std=0.02)
    m.train()
    m(x).logsumexp(-1).sum().backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    first = next(n for n, p in m.named_parameters() if p.ndim > 1)
    assert dict(m.named_parameters())[first].grad.abs().sum() > 0, first

    # gradient checkpointing: same outputs and gradients (no dropout in these configs)
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    m.set_grad_checkpointing(True)
    m(x).logsumexp(-1).sum().backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-5, atol=1e-6, msg=n)
    m.set_grad_checkpointing(False)

    # intermediates: feature maps (B, C, H, W); the last one of the final block/stage is what forward_features gives
    feats = m.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
    assert len(feats) == 2 and all(f.ndim == 4 and f.shape[0] == 3 for f in feats)
    final, last = m.forward_intermediates(x, indices=1)
    assert len(last) == 1
    torch.testing.assert_close(final, m.forward_features(x))
    with pytest.raises(ValueError):
        m.forward_intermediates(x, indices=[99])

    # no-weight-decay names are parameters (or fixed buffers) of the model
    params = dict(m.named_parameters())
    assert all(n in params or n in dict(m.named_buffers()) for n in m.no_weight_decay())

    # save -> load round trip
    m.eval()
    path = vitlab.save_checkpoint(m, tmp_path / "m.safetensors")
    m2 = vitlab.load_checkpoint(path)
    assert type(m2) is type(m) and m2.cfg == m.cfg
    torch.testing.assert_close(m2.eval()(x), m(x), rtol=0, atol=0)

    m.reset_classifier(4)
    assert m(x).shape == (3, 4)
    m.reset_classifier(0)
    assert m(x).shape == (3, m.num_features)


def test_wrong_channels_and_size_are_clear_errors():
    m = vitlab.create_model("vit_micro_patch2_8")
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 1, H, W\)"):
        m(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="img_size=16"):
        m(torch.randn(1, 1, 16, 16))


@pytest.mark.parametrize(
    "overrides",
    [
        dict(global_pool="avg"),
        dict(global_pool="avg", class_token=False),
        dict(pos_embed="sincos"),
        dict(pos_embed="sincos", global_pool="avg", class_token=False),
    ],
)
def test_pooling_and_position_variants(overrides, tmp_path):
    m = vitlab.create_model("vit_micro_patch2_8", **overrides).eval()
    x = torch.randn(2, 1, 8, 8)
    assert m(x).shape == (2, 10)
    if overrides.get("global_pool") == "avg":
        # GAP head: mean of the patch tokens only, then fc_norm (timm's layout)
        feats = m.forward_features(x)
        torch.testing.assert_close(
            m.forward_head(feats, pre_logits=True), m.fc_norm(feats[:, m.num_prefix_tokens :].mean(1))
        )
    if overrides.get("pos_embed") == "sincos":
        assert "pos_embed" not in m.state_dict()  # fixed table, rebuilt for any img_size
        big = vitlab.create_model("vit_micro_patch2_8", img_size=16, **overrides)
        assert big.pos_embed.shape[1] == m.num_prefix_tokens + 64
    m2 = vitlab.load_checkpoint(vitlab.save_checkpoint(m, tmp_path))
    torch.testing.assert_close(m2.eval()(x), m(x))


def test_sincos_table_by_hand():
    from vitlab.layers import sincos_pos_embed_2d

    t = sincos_pos_embed_2d(2, 8)  # omega = [1, 1e-4]; columns [sin x, cos x, sin y, cos y]
    assert t.shape == (4, 8)
    torch.testing.assert_close(t[0], torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]))
    # token 1 is (y=0, x=1)
    torch.testing.assert_close(t[1, :2], torch.tensor([0.8414710, 1e-4]), atol=1e-6, rtol=0)
    torch.testing.assert_close(t[2, 4:6], torch.tensor([0.8414710, 1e-4]), atol=1e-6, rtol=0)


def test_pos_embed_resample_keeps_prefix_and_is_identity_at_same_size():
    from vitlab.layers import resample_pos_embed

    pe = torch.randn(1, 2 + 16, 8)
    assert resample_pos_embed(pe, (4, 4), 2) is pe
    out = resample_pos_embed(pe, (6, 6), 2)
    assert out.shape == (1, 38, 8) and torch.equal(out[:, :2], pe[:, :2])
    const = torch.ones(1, 1 + 9, 4)
    torch.testing.assert_close(resample_pos_embed(const, (5, 5), 1), torch.ones(1, 26, 4))
