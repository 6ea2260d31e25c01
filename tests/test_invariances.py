"""Lecture claims that are properties of the models, tested as such."""

from __future__ import annotations

import pytest
import torch

import vitlab
from vitlab.models.convnext import ConvNeXtBlock


def test_convnext_block_with_zero_layer_scale_is_identity():
    blk = ConvNeXtBlock(16, layer_scale_init=1e-6, drop_path=0.0).eval()
    with torch.no_grad():
        blk.gamma.zero_()
    x = torch.randn(2, 16, 9, 9)
    assert torch.equal(blk(x), x)


def test_resnet_blocks_start_as_identity_on_their_residual_branch():
    m = vitlab.create_model("resnet18", layers=(1, 1, 1, 1)).eval()
    blk = m.layer1[0]  # 64 -> 64, no projection: output = relu(x + 0)
    x = torch.randn(2, 64, 8, 8).relu()
    torch.testing.assert_close(blk(x), x)


def test_resnet_is_a_feature_pyramid():
    m = vitlab.create_model("resnet50", layers=(1, 1, 1, 1)).eval()
    feats = m.forward_intermediates(torch.randn(1, 3, 64, 64), intermediates_only=True)
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 32, 32), (256, 16, 16), (512, 8, 8), (1024, 4, 4), (2048, 2, 2)]


def test_peg_is_translation_equivariant_on_the_token_grid():
    from vitlab.models.cpvt import PEG

    peg = PEG(8)
    grid = torch.zeros(1, 8, 10, 10)
    grid[..., 2:5, 3:6] = torch.randn(1, 8, 3, 3)  # an object well inside the border
    shifted = torch.roll(grid, shifts=(3, 2), dims=(2, 3))
    tokens = lambda g: g.flatten(2).transpose(1, 2)  # noqa: E731
    out = peg(tokens(grid), (10, 10)).transpose(1, 2).reshape(1, 8, 10, 10)
    out_shifted = peg(tokens(shifted), (10, 10)).transpose(1, 2).reshape(1, 8, 10, 10)
    # away from the zero-padded border, shifting the input shifts the output
    torch.testing.assert_close(out_shifted[..., 4:9, 4:9], torch.roll(out, (3, 2), (2, 3))[..., 4:9, 4:9])


def test_cpvt_runs_at_any_multiple_of_the_patch_without_interpolation():
    m = vitlab.create_model("cpvt_tiny_patch16_224", depth=2).eval()
    assert not any("pos_embed" in n for n, _ in m.named_parameters())
    for size in [(224, 224), (384, 384), (160, 272)]:
        assert m(torch.randn(1, 3, *size)).shape == (1, 1000)
    with pytest.raises(ValueError, match="multiple of patch_size=16"):
        m(torch.randn(1, 3, 225, 224))
