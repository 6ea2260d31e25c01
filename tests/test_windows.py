"""Swin's window operations: partition/reverse identity, the shift mask, the relative position index."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vitlab
from vitlab.ops.windows import relative_position_index, shifted_window_mask, window_partition, window_reverse


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(1, 5), st.integers(1, 3))
def test_partition_reverse_is_identity(B, nh, nw, ws, C):
    x = torch.randn(B, nh * ws, nw * ws, C)
    windows = window_partition(x, ws)
    assert windows.shape == (B * nh * nw, ws * ws, C)
    assert torch.equal(window_reverse(windows, ws, nh * ws, nw * ws), x)


def test_partition_by_hand():
    x = torch.arange(16.0).view(1, 4, 4, 1)
    w = window_partition(x, 2)[..., 0]
    assert w.tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]


def test_shift_mask_forbids_exactly_cross_region_pairs():
    H = W = 8
    ws, s = 4, 2
    mask = shifted_window_mask(H, W, ws, s)
    # Recompute by brute force: roll the (row, col) coordinates like the features, and give each token the
    # region of the original map it came from: rows/cols >= H - s wrapped around from the far edge.
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    rolled_r = torch.roll(rows, (-s, -s), (0, 1))
    rolled_c = torch.roll(cols, (-s, -s), (0, 1))

    def band(v):  # which of the three bands of the rolled map a position falls in
        return torch.where(v < H - ws, 0, torch.where(v < H - s, 1, 2))

    pos_r, pos_c = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    region = band(pos_r) * 3 + band(pos_c)
    ids = window_partition(region[None, ..., None].float(), ws)[..., 0]  # (nW, N)
    expected = (ids[:, :, None] != ids[:, None, :]).float() * -100
    assert torch.equal(mask, expected)
    # the first window holds no wrapped-around token: nothing masked; the last one mixes four regions
    assert (mask[0] == 0).all() and (mask[-1] != 0).any()
    # tokens that really were neighbours before the roll are never masked from each other within a window
    src = window_partition(torch.stack([rolled_r, rolled_c], -1)[None].float(), ws)  # (nW, N, 2)
    near = ((src[:, :, None] - src[:, None, :]).abs().amax(-1) <= 1) & (mask == 0)
    assert near.any()


def test_relative_position_index_by_hand():
    idx = relative_position_index(2)  # table of (2*2-1)^2 = 9 rows; (dy, dx) = (0, 0) is row 4
    assert idx.shape == (4, 4) and idx.diagonal().tolist() == [4, 4, 4, 4]
    assert idx[0, 3].item() == (0 - 1 + 1) * 3 + (0 - 1 + 1)  # token 0 (0,0) vs token 3 (1,1): dy = dx = -1
    assert idx.max().item() == 8 and idx.min().item() == 0


def test_small_feature_map_rule():
    m = vitlab.create_model("swin_micro_patch4_window4_32")
    stages = [[(b.window_size, b.shift_size) for b in stage.blocks] for stage in m.layers]
    assert stages == [[(4, 0), (4, 2)], [(4, 0), (4, 0)], [(2, 0), (2, 0)]]  # maps 8, 4 (= window), 2 (< window)
    t = vitlab.create_model("swin_tiny_patch4_window7_224", img_size=112)  # maps 28, 14, 7, 4
    assert [(b.window_size, b.shift_size) for b in t.layers[3].blocks] == [(4, 0), (4, 0)]
    assert t(torch.randn(1, 3, 112, 112)).shape == (1, 1000)


def test_training_path_equals_inference_path_and_trains_the_bias_table():
    # on a CPU, training runs the explicit softmax (the bias table needs a gradient); inference runs SDPA
    from vitlab.models.swin import WindowAttention

    torch.manual_seed(0)
    attn = WindowAttention(dim=16, num_heads=2, window_size=4, qkv_bias=True)
    torch.nn.init.normal_(attn.relative_position_bias_table, std=1.0)
    x = torch.randn(8, 16, 16)  # 2 images x 4 windows
    mask = shifted_window_mask(8, 8, 4, 2, device=x.device, dtype=x.dtype)
    with torch.no_grad():
        fused = attn(x, mask)
    explicit = attn(x, mask)
    torch.testing.assert_close(explicit, fused, rtol=1e-5, atol=1e-5)
    explicit.sum().backward()
    assert attn.relative_position_bias_table.grad.abs().sum() > 0


def test_drop_path_keeps_the_expectation_and_drops_whole_samples():
    from vitlab.layers.drop_path import drop_path

    torch.manual_seed(0)
    x = torch.ones(20000, 3)
    y = drop_path(x, 0.25, training=True)
    kept = y[:, 0] != 0
    assert torch.all(y[kept] == 1 / 0.75) and torch.all(y[~kept] == 0)  # per sample: all or nothing
    assert abs(kept.float().mean().item() - 0.75) < 0.02
    assert drop_path(x, 0.25, training=False) is x
