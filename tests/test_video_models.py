"""Video transformers (ViViT models 1 and 2, TimeSformer divided / joint / axial): the model contract on clips and
bad input."""

from __future__ import annotations

import pytest
import torch

import vitlab
from tests.conftest import randomise_weights
from vitlab.errors import ConfigError

VIDEO = vitlab.list_models(kind="video")
MICRO = [n for n in VIDEO if "_micro_" in n]  # the base variants share their code; their contract runs with -m slow
CONTRACT = MICRO + [pytest.param(n, marks=pytest.mark.slow) for n in VIDEO if n not in MICRO]


def small(name: str, **kw):
    with torch.device("meta"):
        full = vitlab.create_model(name)
    return vitlab.create_model(name, **{**full.cfg.test_overrides(), **kw})


def clips(m, B: int = 2) -> torch.Tensor:
    c = m.cfg
    return torch.randn(B, c.num_frames, c.in_chans, c.img_size, c.img_size)


def test_registry_has_the_papers_models():
    want = {"vivit_base_patch16x2_224", "vivit_base_fe_patch16x2_224", "timesformer_base_patch16_224",
            "timesformer_base_axial_patch16_224", "vivit_micro_patch4x2_16", "timesformer_micro_patch4_16"}  # fmt: skip
    assert want <= set(VIDEO)
    assert not set(VIDEO) & set(vitlab.list_models(kind="classifier"))


@pytest.mark.parametrize("name", VIDEO)
def test_full_size_shapes_on_meta(name):
    with torch.device("meta"):
        m = vitlab.create_model(name)
        assert m(clips(m)).shape == (2, m.num_classes)
        assert m.pretrained_cfg["input_size"] == (m.cfg.num_frames, 3, m.cfg.img_size, m.cfg.img_size)


@pytest.mark.parametrize("name", CONTRACT)
def test_contract(name, tmp_path):
    m = small(name, num_classes=5)
    x = clips(m, 3)
    m.eval()
    y = m(x)
    assert y.shape == (3, 5) and torch.isfinite(y).all()
    assert torch.equal(y, m(x))
    assert m.forward_head(m.forward_features(x), pre_logits=True).shape == (3, m.cfg.embed_dim)
    # every parameter gets a gradient (the zero-initialised head and temporal_fc perturbed first)
    randomise_weights(m)
    m.train()
    m(x).logsumexp(-1).sum().backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    # grad checkpointing computes the same
    m.eval()
    ref = m(x)
    m.set_grad_checkpointing(True)
    m.train()
    torch.testing.assert_close(m.eval()(x), ref)
    # save -> load round trip
    path = vitlab.save_checkpoint(m, tmp_path / "m.safetensors")
    back = vitlab.load_checkpoint(path).eval()
    torch.testing.assert_close(back(x), ref)
    # timm's classifier API and intermediates
    assert m.get_classifier() is m.head
    m.reset_classifier(0)
    assert m(x).shape == (3, m.cfg.embed_dim)
    feats = m.forward_intermediates(x, indices=1, intermediates_only=True)
    assert len(feats) == 1 and feats[0].ndim == 3
    assert {"cls_token", "pos_embed"} <= m.no_weight_decay()


def test_bad_clips_are_one_clear_error():
    m = small("timesformer_micro_patch4_16")
    T, C, S = m.cfg.num_frames, m.cfg.in_chans, m.cfg.img_size
    with pytest.raises(ValueError, match=r"look like \(B, C, T, H, W\)"):
        m(torch.randn(1, C, T, S, S))
    with pytest.raises(ValueError, match=f"num_frames={T + 1}"):
        m(torch.randn(1, T + 1, C, S, S))
    with pytest.raises(ValueError, match="expected clips of shape"):
        m(torch.randn(1, C, S, S))
    with pytest.raises(TypeError, match="floating-point"):
        m(torch.zeros(1, T, C, S, S, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="multiple of tubelet_t"):
        vitlab.create_model("vivit_micro_patch4x2_16", num_frames=3)
    with pytest.raises(ConfigError, match="attention_type"):
        vitlab.create_model("timesformer_micro_patch4_16", attention_type="sparse")


@pytest.mark.parametrize("name", ["timesformer_micro_patch4_16", "timesformer_micro_axial_patch4_16"])
def test_only_the_temporal_path_sees_frame_order(name):
    """With temporal_fc = 0 and the time table at 0, each frame is processed alone and the class token averages
    over frames: reversing the clip changes nothing. With them, the model sees the order (motion direction)."""
    m = small(name).eval()
    randomise_weights(m)
    x = clips(m, 2)
    rev = x.flip(1)
    with torch.no_grad():
        assert not torch.allclose(m(x), m(rev), atol=1e-4)
        m.time_embed.zero_()
        for blk in m.blocks:
            blk.temporal_fc.weight.zero_()
            blk.temporal_fc.bias.zero_()
        torch.testing.assert_close(m(x), m(rev), atol=1e-5, rtol=1e-5)
