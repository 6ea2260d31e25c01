"""Contract tests over every registered model: the one API all families share."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import vitlab
from tests.conftest import randomise_weights
from vitlab.errors import ConfigError, UnknownModelError
from vitlab.fx import create_fx_model
from vitlab.registry import get_entry

ALL = vitlab.list_models(kind="classifier")  # detectors keep their own API (tests/test_detr_*)


def small(name: str, **kw):
    """The registered model shrunk by its config's own `test_overrides` (depth and input; randomness off)."""
    with torch.device("meta"):
        full = vitlab.create_model(name)
    assert isinstance(full.cfg, get_entry(name).config_cls)
    return vitlab.create_model(name, **{**full.cfg.test_overrides(), **kw}), full.cfg


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
        assert m(x).shape == (2, m.num_classes or m.head_hidden_size)
        assert m.forward_head(m.forward_features(x), pre_logits=True).shape == (2, m.head_hidden_size)


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
    assert m.forward_head(m.forward_features(x), pre_logits=True).shape == (3, m.head_hidden_size)

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

    check_intermediates(m, x)

    # no-weight-decay names are parameters (or fixed buffers) of the model
    params = dict(m.named_parameters())
    assert all(n in params or n in dict(m.named_buffers()) for n in m.no_weight_decay())

    # save -> load round trip
    m.eval()
    path = vitlab.save_checkpoint(m, tmp_path / "m.safetensors")
    m2 = vitlab.load_checkpoint(path)
    assert type(m2) is type(m) and m2.cfg == m.cfg
    torch.testing.assert_close(m2.eval()(x), m(x), rtol=0, atol=0)

    check_classifier(m, x)


def check_intermediates(m, x):
    """One `forward_intermediates` for every family: NCHW maps, NLC tokens, `norm` applied or a clear error."""
    feats = m.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
    assert len(feats) == 2 and all(f.ndim == 4 and f.shape[0] == 3 for f in feats)
    assert feats[-1].shape[1] == m.num_features  # the last block/stage has the features' width
    final, last = m.forward_intermediates(x, indices=1)
    assert len(last) == 1
    torch.testing.assert_close(final, m.forward_features(x))
    with pytest.raises(ValueError, match="index 99"):
        m.forward_intermediates(x, indices=[99])
    with pytest.raises(ValueError, match="output_fmt must be one of"):
        m.forward_intermediates(x, output_fmt="NHWC")

    # NLC: (B, N, C) tokens, prefix tokens first; a CNN's map flattened. The grid tokens are the NCHW map's.
    tokens = m.forward_intermediates(x, indices=[0, -1], output_fmt="NLC", intermediates_only=True)
    for t, f in zip(tokens, feats, strict=True):
        B, C, H, W = f.shape
        assert t.shape == (B, H * W, C)  # prefix tokens split off, as timm
        torch.testing.assert_close(t[:, t.shape[1] - H * W :], f.flatten(2).transpose(1, 2))

    # norm=True: the final norm (the one forward_features ends with) on the last output, or an error naming norm
    final_norm = m._final_norm()
    if final_norm is None:
        plain = m.forward_intermediates(x, indices=1, norm=True, output_fmt="NLC", intermediates_only=True)[0]
        torch.testing.assert_close(plain, tokens[-1])  # timm: a no-op where the features are not normalised
    else:
        normed = m.forward_intermediates(x, indices=1, norm=True, output_fmt="NLC", intermediates_only=True)[0]
        torch.testing.assert_close(normed, final_norm(tokens[-1]))
        assert not torch.allclose(normed, tokens[-1])


def check_classifier(m, x):
    """timm's classifier API; a reset builds a new frozen config and leaves the old one as it was."""
    heads = [m.get_submodule(n) for n in m.get_classifier_names()]
    got = m.get_classifier()
    assert (got is heads[0]) if len(heads) == 1 else list(got) == heads
    assert isinstance(heads[0], torch.nn.Linear) and heads[0].out_features == m.num_classes
    assert heads[0].in_features == m.head_hidden_size

    old = m.cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        old.num_classes = 4
    snapshot = dataclasses.asdict(old)
    m.reset_classifier(4)
    assert m(x).shape == (3, 4) and m.num_classes == m.cfg.num_classes == 4
    assert m.cfg is not old and dataclasses.asdict(old) == snapshot
    m.reset_classifier(0)
    assert m(x).shape == (3, m.head_hidden_size) and m.cfg.num_classes == 0
    assert isinstance(m.get_classifier(), torch.nn.Identity if len(heads) == 1 else tuple)
    if m.unpooled_features:  # timm's reset_classifier(0, ''): forward gives forward_features' shape
        pool = m.global_pool
        m.reset_classifier(0, "")
        assert m(x).shape == m.forward_features(x).shape and m.global_pool == ""
        with pytest.raises(ValueError, match="needs num_classes=0"):
            m.reset_classifier(5, None)  # None keeps the pooling: none
        m.reset_classifier(0, pool)
    m.reset_classifier(5, None)
    assert m(x).shape == (3, 5)
    for pool in m.global_pools:  # every pooling the family offers is accepted
        if pool != "token" or getattr(m, "cls_token", True) is not None:
            m.reset_classifier(5, pool)
            assert m(x).shape == (3, 5)
    with pytest.raises(ValueError, match="global_pool='max'"):
        m.reset_classifier(5, "max")
    assert m.cfg.num_classes == 5  # a refused reset changes nothing


def test_wrong_channels_and_size_are_clear_errors():
    m = vitlab.create_model("vit_micro_patch2_8")
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 1, H, W\), got \(1, 3, 8, 8\)$"):
        m(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="img_size=16"):
        m(torch.randn(1, 1, 16, 16))
    # the same checks compiled into a scripted model, with the same messages
    scripted = torch.jit.script(m)
    with pytest.raises(torch.jit.Error, match=r"expected images of shape \(B, 1, H, W\), got \(1, 3, 8, 8\)"):
        scripted(torch.randn(1, 3, 8, 8))
    with pytest.raises(torch.jit.Error, match="img_size=16"):
        scripted(torch.randn(1, 1, 16, 16))


def one_per_code_path(names: list[str]) -> list[str]:
    """The first variant of each model class and choice of its config's str and bool fields (pooling, tokens, block
    type): the settings that pick code paths, where sizes only change shapes. Scripting takes seconds a model."""
    seen = {}
    for name in names:
        with torch.device("meta"):
            m = vitlab.create_model(name)
        cfg = m.cfg
        flags = tuple((f.name, v) for f in dataclasses.fields(cfg) if isinstance(v := getattr(cfg, f.name), bool | str))
        seen.setdefault((type(m), flags), name)
    return list(seen.values())


@pytest.mark.parametrize("name", one_per_code_path(ALL))
def test_torchscript_equals_eager(name, tmp_path):
    """torch.jit.script of the model, and of its torch.fx trace, computes the eager outputs; the scripted model
    saves and loads (nothing is left to Python), and runs its blocks plainly where eager checkpoints them."""
    m, _ = small(name, num_classes=7)
    randomise_weights(m)
    m.set_grad_checkpointing(True)
    x = torch.randn(2, m.cfg.in_chans, m.cfg.img_size, m.cfg.img_size)
    want = m(x)
    scripted = torch.jit.script(m)
    torch.testing.assert_close(scripted(x), want, rtol=1e-5, atol=1e-5)
    torch.jit.save(scripted, tmp_path / "m.pt")
    torch.testing.assert_close(torch.jit.load(tmp_path / "m.pt")(x), want, rtol=1e-5, atol=1e-5)
    m.set_grad_checkpointing(False)
    (traced,) = torch.jit.script(create_fx_model(m))(x).values()
    torch.testing.assert_close(traced, want, rtol=1e-5, atol=1e-5)


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


def test_vit_pool_reset_keeps_the_built_norm_layout(tmp_path):
    m = vitlab.create_model("vit_micro_patch4_8").eval()
    assert m.cfg.fc_norm is False  # resolved from global_pool="token" at construction
    m.reset_classifier(3, "avg")
    assert m.cfg.global_pool == "avg" and m.cfg.fc_norm is False  # tokens still normalised by `norm`
    x = torch.randn(2, 1, 8, 8)
    feats = m.forward_features(x)
    torch.testing.assert_close(m.forward_head(feats, pre_logits=True), feats[:, 1:].mean(1))
    m2 = vitlab.load_checkpoint(vitlab.save_checkpoint(m, tmp_path))
    assert m2.cfg == m.cfg
    torch.testing.assert_close(m2.eval()(x), m(x))

    gap = vitlab.create_model("cpvt_micro_patch4_8")  # no class token: 'token' pooling is refused by the config
    with pytest.raises(ValueError, match="global_pool='token' needs class_token=True"):
        gap.reset_classifier(3, "token")
    assert gap.cfg.global_pool == "avg" and gap.num_classes == 10


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
