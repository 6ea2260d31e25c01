"""Lecture claims that are properties of the models, tested as such."""

from __future__ import annotations

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
    assert [tuple(f.shape[1:]) for f in feats] == [(256, 16, 16), (512, 8, 8), (1024, 4, 4), (2048, 2, 2)]
