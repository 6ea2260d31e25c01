"""Attention maps on request: only the asked layers leave the SDPA path, and their output is unchanged."""

from __future__ import annotations

import pytest
import torch

import vitlab
from vitlab.explain import attention_maps, attention_rollout
from vitlab.layers import Attention


def test_captured_attention_matches_sdpa_path():
    attn = Attention(32, num_heads=4).eval()
    x = torch.randn(2, 5, 32)
    fast = attn(x)
    attn.capture_attn = True
    slow = attn(x)
    torch.testing.assert_close(slow, fast, rtol=1e-5, atol=1e-6)
    p = attn.attn_probs
    assert p.shape == (2, 4, 5, 5)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 4, 5))


def test_attention_maps_only_requested_layers():
    m = vitlab.create_model("vit_micro_patch2_8").eval()
    x = torch.randn(3, 1, 8, 8)
    y = m(x)
    maps = attention_maps(m, x, layers=[0, -1])
    assert sorted(maps) == [0, 3] and maps[3].shape == (3, 4, 17, 17)
    assert all(not a.capture_attn and a.attn_probs is None for a in m.attention_layers())
    torch.testing.assert_close(m(x), y)
    with pytest.raises(ValueError, match="out of range"):
        attention_maps(m, x, layers=[4])


def test_rollout_rows_are_distributions():
    m = vitlab.create_model("deit_micro_distilled_patch4_8").eval()
    r = attention_rollout(m, torch.randn(2, 1, 8, 8), discard_ratio=0.5)
    assert r.shape == (2, 6, 6)  # [cls, dist] + 2x2 patches
    torch.testing.assert_close(r.sum(-1), torch.ones(2, 6))
