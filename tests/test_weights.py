"""Checkpoint reading: formats detected from keys, safe pickles only, clear errors for what does not fit."""

from __future__ import annotations

import logging
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

import vitlab
from vitlab.errors import CheckpointError


def test_timm_style_pth_with_wrapper_and_module_prefix(tmp_path):
    src = vitlab.create_model("vit_micro_patch2_8")
    torch.nn.init.normal_(src.head.weight)
    torch.save({"model": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "w.pth")
    m = vitlab.create_model("vit_micro_patch2_8", pretrained=tmp_path / "w.pth")
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(m.eval()(x), src.eval()(x))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": _Evil()}, f)
    with pytest.raises(CheckpointError, match="refusing to load .*evil.pth"):
        vitlab.create_model("vit_micro_patch2_8", pretrained=path)


def test_mismatched_keys_are_listed(tmp_path):
    sd = vitlab.create_model("vit_micro_patch2_8").state_dict()
    sd.pop("blocks.0.norm1.weight")
    sd["blocks.9.extra"] = torch.zeros(1)
    save_file(sd, tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError) as e:
        vitlab.create_model("vit_micro_patch2_8", pretrained=tmp_path / "w.safetensors")
    msg = str(e.value)
    assert "missing keys (1): blocks.0.norm1.weight" in msg and "unexpected keys (1): blocks.9.extra" in msg
    assert "re-initialised" not in msg


def test_shape_mismatch_is_listed(tmp_path):
    save_file(vitlab.create_model("vit_micro_patch2_8", embed_dim=32).state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match=r"shape mismatch \(54\): blocks.0.attn.proj.bias: checkpoint \(32,\)"):
        vitlab.create_model("vit_micro_patch2_8", pretrained=tmp_path / "w.safetensors")


def test_new_num_classes_reinitialises_head_with_warning(tmp_path, caplog):
    src = vitlab.create_model("vit_micro_patch2_8")
    torch.nn.init.normal_(src.head.weight)
    path = vitlab.save_checkpoint(src, tmp_path)
    with caplog.at_level(logging.WARNING, logger="vitlab"):
        m = vitlab.create_model("vit_micro_patch2_8", pretrained=path, num_classes=3)
    assert "re-initialised" in caplog.text and "head.weight" in caplog.text
    assert m.head.weight.shape == (3, 64) and m.head.weight.abs().sum() == 0
    torch.testing.assert_close(m.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)


def test_new_img_size_resamples_pos_embed_and_keeps_class_token(tmp_path):
    src = vitlab.create_model("deit_micro_distilled_patch4_8")
    path = vitlab.save_checkpoint(src, tmp_path / "x.safetensors")
    m = vitlab.create_model("deit_micro_distilled_patch4_8", pretrained=path, img_size=16)
    assert m.pos_embed.shape == (1, 2 + 16, 64)
    torch.testing.assert_close(m.pos_embed[:, :2], src.pos_embed[:, :2])
    assert m(torch.randn(1, 1, 16, 16)).shape == (1, 10)


def test_missing_and_foreign_paths(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        vitlab.create_model("vit_micro_patch2_8", pretrained=tmp_path / "nope.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a vitlab run"):
        vitlab.create_model("vit_micro_patch2_8", pretrained=tmp_path / "empty")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read .*bad.safetensors"):
        vitlab.create_model("vit_micro_patch2_8", pretrained=tmp_path / "bad.safetensors")


def test_hf_hub_loads_offline_from_local_cache(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("huggingface_hub")
    cfg = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=16, patch_size=4
    )
    ref = transformers.ViTForImageClassification(cfg).eval()
    # The hub cache layout: models--ORG--NAME/{refs/main, snapshots/REV/...}
    repo = tmp_path / "hub" / "models--lab--tiny-vit"
    snap = repo / "snapshots" / ("0" * 40)
    ref.save_pretrained(snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    m = vitlab.create_model("vit_tiny_patch16_224", pretrained="hf-hub:lab/tiny-vit").eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert (m(x) - ref(pixel_values=x).logits).abs().max() < 1e-4
    with pytest.raises(CheckpointError, match="hf-hub:lab/absent"):
        vitlab.create_model("vit_tiny_patch16_224", pretrained="hf-hub:lab/absent")
