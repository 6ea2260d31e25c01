"""Attention maps on request: only the asked layers leave the SDPA path, and their output is unchanged.

Rollout (Abnar & Zuidema, arXiv 2005.00928) where one token set runs through all layers; Swin's window maps
(arXiv 2103.14030) stitched back onto the token grid.
"""

from __future__ import annotations

import pytest
import torch

import vitlab
from vitlab.explain import (
    attention_maps,
    attention_rollout,
    capture_attention,
    stitch_window_attention,
    swin_attention_maps,
)
from vitlab.layers import Attention, attend


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


# ----- one attention function ---------------------------------------------------------------------------------------


def test_attend_explicit_path_equals_sdpa_with_bias_and_rectangular_keys():
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    bias = torch.randn(3, 5, 7)
    fast, none = attend(q, k, v, bias=bias, scale=0.3)
    slow, probs = attend(q, k, v, bias=bias, scale=0.3, capture=True)
    assert none is None and probs.shape == (2, 3, 5, 7)
    torch.testing.assert_close(slow, fast, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs, torch.softmax(q @ k.transpose(-2, -1) * 0.3 + bias, dim=-1))
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3, 5))


# ----- capture_attention on one micro model per attention family ----------------------------------------------------

# name: the probability shape of every attention layer for a batch of 2
MICRO = {
    "vit_micro_patch2_8": [(2, 4, 17, 17)] * 4,  # [cls] + 4x4 patches
    "deit_micro_distilled_patch4_8": [(2, 4, 6, 6)] * 4,  # [cls, dist] + 2x2 patches
    "cpvt_micro_patch4_8": [(2, 4, 4, 4)] * 4,  # 2x2 patches, no class token
    # maps 8 (4 windows of 4x4), 4 (one window), 2 (the window shrinks to 2): one map per window
    "swin_micro_patch4_window4_32": [(8, 2, 16, 16)] * 2 + [(2, 4, 16, 16)] * 2 + [(2, 8, 4, 4)] * 2,
    # queries on 16x16, 8x8, [cls] + 4x4; keys/values on the grid subsampled by 2 (+ [cls] in the last stage)
    "cvt_micro_32": [(2, 1, 256, 64), (2, 2, 64, 16), (2, 4, 17, 5), (2, 4, 17, 5)],
}


def micro(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model with non-zero heads and a visible Swin bias (so outputs depend on every attention weight) + a batch."""
    m = vitlab.create_model(name)
    heads = tuple(f"{h}." for h in m.get_classifier_names())
    for n, p in m.named_parameters():
        if n.startswith(heads) or n.endswith("relative_position_bias_table"):
            torch.nn.init.normal_(p, std=0.5)
    return m, torch.randn(2, m.cfg.in_chans, m.cfg.img_size, m.cfg.img_size)


def count_sdpa(monkeypatch) -> list[int]:
    calls = [0]
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls[0] += 1
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    return calls


@pytest.mark.parametrize("name", sorted(MICRO))
def test_capture_keeps_outputs_and_gives_distributions(name):
    m, x = micro(name)
    m.eval()
    with torch.no_grad():
        y = m(x)
        with capture_attention(m) as maps:
            y_captured = m(x)
    torch.testing.assert_close(y_captured, y, rtol=1e-5, atol=1e-5)
    assert [tuple(maps[i].shape) for i in sorted(maps)] == MICRO[name]
    for a in maps.values():
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))
        assert (a >= 0).all()


@pytest.mark.parametrize("name", sorted(MICRO))
def test_only_requested_layers_leave_sdpa(name, monkeypatch):
    m, x = micro(name)
    L = len(m.attention_layers())
    calls = count_sdpa(monkeypatch)
    with torch.no_grad(), capture_attention(m.eval(), layers=[1, -1]) as maps:
        assert [a.capture_attn for a in m.attention_layers()] == [i in (1, L - 1) for i in range(L)]
        m(x)
    assert sorted(maps) == [1, L - 1]
    assert calls[0] == L - 2  # every other layer ran SDPA
    assert all(not a.capture_attn and a.attn_probs is None for a in m.attention_layers())
    calls[0] = 0
    with torch.no_grad():
        m(x)
    assert calls[0] == L


def test_swin_cpu_training_keeps_the_explicit_softmax(monkeypatch):
    # the learnable bias needs a gradient: SDPA's CPU composite is slower there (benchmarks/README.md, Swin training)
    m, x = micro("swin_micro_patch4_window4_32")
    calls = count_sdpa(monkeypatch)
    m.train()(x).sum().backward()
    assert calls[0] == 0 and m.attention_layers()[0].relative_position_bias_table.grad is not None
    with torch.no_grad():
        m.eval()(x)
    assert calls[0] == len(m.attention_layers())


@pytest.mark.parametrize("name", ["vit_micro_patch2_8", "cvt_micro_32"])
def test_modes_are_restored_and_attention_maps_runs_in_eval(name):
    m, x = micro(name)
    m.train()
    with capture_attention(m, layers=[0]) as maps:
        m.eval()
        m(x)
    assert m.training and all(mod.training for mod in m.modules())
    assert sorted(maps) == [0]
    bn = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    stats = [b.running_mean.clone() for b in bn]
    attention_maps(m, x, layers=[-1])
    assert m.training and all(mod.training for mod in m.modules())  # the eval-mode leak of attention_maps
    for b, s in zip(bn, stats, strict=True):
        assert torch.equal(b.running_mean, s)  # it ran in eval mode: BatchNorm statistics untouched


def test_flags_and_mode_restored_after_an_exception():
    m, x = micro("swin_micro_patch4_window4_32")
    m.train()
    with pytest.raises(RuntimeError, match="boom"), capture_attention(m, layers=[0, 3]):
        m.eval()(x)
        raise RuntimeError("boom")
    assert m.training and all(mod.training for mod in m.modules())
    assert all(not a.capture_attn and a.attn_probs is None for a in m.attention_layers())
    with pytest.raises(ValueError, match="expected images"), capture_attention(m, layers=[0]):
        m(torch.randn(1, 1, 32, 32))  # a failing forward
    assert not any(a.capture_attn for a in m.attention_layers())


def test_maps_hold_the_last_forward_and_indices_name_the_range():
    m, x = micro("cpvt_micro_patch4_8")
    with torch.no_grad(), capture_attention(m.eval(), layers=-2) as maps:
        m(x)
        m(x[:1])
    assert sorted(maps) == [2] and maps[2].shape == (1, 4, 4, 4)
    range_error = r"out of range: the model has 4, so indices lie in \[-4, 3\]"
    with pytest.raises(ValueError, match=range_error), capture_attention(m, layers=[0, -5]):
        pass
    assert not any(a.capture_attn for a in m.attention_layers())


@pytest.mark.parametrize("name", ["mixer_micro_patch4_32", "convnext_micro_32", "resnet18", "lenet5"])
def test_models_without_attention_are_one_clear_error(name):
    m = vitlab.create_model(name)
    with pytest.raises(ValueError, match="has no attention layers"), capture_attention(m):
        pass
    x = torch.randn(1, m.cfg.in_chans, m.cfg.img_size, m.cfg.img_size)
    with pytest.raises(ValueError, match="has no attention layers"):
        attention_maps(m, x)


# ----- probabilities checked by hand against softmax(q k^T * scale) from the layer's weights --------------------------


def inputs_of(layer: torch.nn.Module, run) -> tuple:
    seen = []
    handle = layer.register_forward_pre_hook(lambda mod, args: seen.append(args))
    try:
        run()
    finally:
        handle.remove()
    return seen[0]


def test_vit_probabilities_by_hand():
    m, x = micro("vit_micro_patch2_8")
    layer = m.attention_layers()[2]
    (t,) = inputs_of(layer, lambda: m.eval()(x))  # (B, N, D): LN1 output entering block 2's attention
    maps = attention_maps(m, x, layers=[2])
    B, N, D = t.shape
    H = layer.num_heads
    q, k, _ = layer.qkv(t).view(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)  # each (B, H, N, Dh)
    expected = torch.softmax(q @ k.transpose(-2, -1) / (D // H) ** 0.5, dim=-1)  # (B, H, N, N)
    torch.testing.assert_close(maps[2], expected.detach())


def test_cvt_probabilities_by_hand_use_the_official_scale():
    m, x = micro("cvt_micro_32")
    layer = m.attention_layers()[2]  # last stage: [cls] + 4x4 queries, [cls] + 2x2 keys
    t, (h, w) = inputs_of(layer, lambda: m.eval()(x))
    maps = attention_maps(m, x, layers=[2])
    B, N, C = t.shape
    feat = t[:, 1:].transpose(1, 2).reshape(B, C, h, w)
    q = layer.proj_q(torch.cat([t[:, :1], layer.conv_proj_q(feat)], dim=1))  # (B, 17, C)
    k = layer.proj_k(torch.cat([t[:, :1], layer.conv_proj_k(feat)], dim=1))  # (B, 5, C)
    H = layer.num_heads
    q, k = (z.view(B, -1, H, C // H).transpose(1, 2) for z in (q, k))  # (B, H, N, Dh)
    expected = torch.softmax(q @ k.transpose(-2, -1) / C**0.5, dim=-1)  # 1/sqrt(embed_dim), as the official code
    torch.testing.assert_close(maps[2], expected.detach())


# ----- rollout -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, why",
    [
        ("swin_micro_patch4_window4_32", r"layer 0 is windowed .* use vitlab\.explain\.swin_attention_maps"),
        ("cvt_micro_32", r"queries and keys/values on different token grids \(256 queries, 64 keys"),
    ],
)
def test_rollout_refuses_where_undefined_in_one_sentence(name, why):
    m, x = micro(name)
    m.train()
    with pytest.raises(ValueError, match=why) as err:
        attention_rollout(m, x)
    assert ". " not in str(err.value) and "\n" not in str(err.value)
    assert m.training and not any(a.capture_attn for a in m.attention_layers())


@pytest.mark.parametrize("name", ["vit_micro_patch2_8", "cpvt_micro_patch4_8"])
def test_rollout_where_defined(name):
    m, x = micro(name)
    r = attention_rollout(m, x)
    N = MICRO[name][0][-1]
    assert r.shape == (2, N, N)
    torch.testing.assert_close(r.sum(-1), torch.ones(2, N))


# ----- Swin window maps on the token grid ----------------------------------------------------------------------------

# 4x4 grid, windows of 2x2: the token (row-major index on the grid) in each window slot, by hand. With shift 1 the
# block rolls the map by -1: rolled slot (r, c) holds token ((r + 1) % 4, (c + 1) % 4).
TINY = {
    0: [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]],
    1: [[5, 6, 9, 10], [7, 4, 11, 8], [13, 14, 1, 2], [15, 12, 3, 0]],
}


@pytest.mark.parametrize("shift", [0, 1])
def test_stitch_window_attention_by_hand(shift):
    probs = torch.rand(2 * 4, 3, 4, 4).softmax(-1)  # 2 images x 4 windows, 3 heads
    out = stitch_window_attention(probs, (4, 4), window_size=2, shift_size=shift)
    expected = torch.zeros(2, 3, 16, 16)
    for b in range(2):
        for w, slots in enumerate(TINY[shift]):
            expected[b][:, torch.tensor(slots)[:, None], torch.tensor(slots)] = probs[b * 4 + w]
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(out.sum(-1), torch.ones(2, 3, 16))
    with pytest.raises(ValueError, match="not a multiple of window_size=3"):
        stitch_window_attention(probs, (4, 4), window_size=3)


def shifted_window_id(Hp: int, Wp: int, ws: int, s: int) -> torch.Tensor:
    """(Hp*Wp,) window of each token: token (r, c) sits at ((r - s) % Hp, (c - s) % Wp) of the rolled map."""
    r, c = torch.meshgrid(torch.arange(Hp), torch.arange(Wp), indexing="ij")
    return (((r - s) % Hp // ws) * (Wp // ws) + (c - s) % Wp // ws).flatten()


def test_swin_attention_maps_on_the_grid_match_the_block():
    m, x = micro("swin_micro_patch4_window4_32")
    m.train()
    maps = swin_attention_maps(m, x)
    assert m.training
    assert {i: tuple(a.shape) for i, a in maps.items()} == {
        0: (2, 2, 64, 64), 1: (2, 2, 64, 64), 2: (2, 4, 16, 16), 3: (2, 4, 16, 16), 4: (2, 8, 4, 4), 5: (2, 8, 4, 4)
    }  # fmt: skip
    for a in maps.values():
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))
    # stage 0: 8x8 tokens, windows of 4; block 0 unshifted, block 1 shifted by 2
    for i, shift in ((0, 0), (1, 2)):
        win = shifted_window_id(8, 8, 4, shift)
        outside = win[:, None] != win[None, :]  # (N, N)
        assert (maps[i][:, :, outside] == 0).all()
    # the shifted block, in image coordinates: (stitched map @ v) -> proj is the block's attention output
    blk = m.layers[0].blocks[1]
    (xin,) = inputs_of(blk, lambda: m.eval()(x))  # (B, 8, 8, C)
    with torch.no_grad():
        t = blk.norm1(xin)
        B, Hs, Ws, C = t.shape
        H = blk.attn.num_heads
        v = blk.attn.qkv(t.reshape(B, Hs * Ws, C))[..., 2 * C :].view(B, -1, H, C // H).transpose(1, 2)  # (B, H, N, Dh)
        out = blk.attn.proj((maps[1] @ v).transpose(1, 2).reshape(B, Hs * Ws, C))  # (B, N, C)
        torch.testing.assert_close(out, blk._attend(t).reshape(B, Hs * Ws, C), rtol=1e-5, atol=1e-5)


def test_swin_attention_maps_refuses_other_models():
    m, x = micro("vit_micro_patch2_8")
    with pytest.raises(ValueError, match="not in a Swin block"):
        swin_attention_maps(m, x)


def test_swin_attention_maps_on_a_padded_map():
    m, _ = micro("swin_micro_patch4_window4_32")
    # built for 32: windows 4, 4, 2; at 24 the stage maps are 6 and 3, both padded up to the window (8 and 4)
    maps = swin_attention_maps(m, torch.randn(1, 3, 24, 24), layers=[0, 1, 2])
    assert [tuple(maps[i].shape) for i in (0, 1, 2)] == [(1, 2, 64, 64), (1, 2, 64, 64), (1, 4, 16, 16)]
    for a in maps.values():
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))
