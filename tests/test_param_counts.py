"""Parameter counts equal the reference implementations (shared/REFERENCE.md, timm's counts)."""

from __future__ import annotations

import pytest

from vitlab.profiling import model_stats

COUNTS = {
    "vit_base_patch16_224": 86_567_656,
    "vit_large_patch16_224": 304_326_632,
    "deit_small_distilled_patch16_224": 22_436_432,
    "vit_small_patch16_224": 22_050_664,  # paper table: 22.1M
    "vit_tiny_patch16_224": 5_717_416,  # paper table: 5.7M
}


@pytest.mark.parametrize("name,count", COUNTS.items())
def test_param_count(name, count):
    assert model_stats(name, flops=False).params == count


def test_vit_huge_backbone_count():
    # timm's vit_huge_patch14_224 (in21k weights) is headless: 630,764,800; the 1000-class head adds 1,281,000.
    assert model_stats("vit_huge_patch14_224", flops=False, num_classes=0).params == 630_764_800
    assert model_stats("vit_huge_patch14_224", flops=False).params == 630_764_800 + 1280 * 1000 + 1000


def test_flops_vit_b16():
    # 17.56 GMACs at 224 (timm's table: 17.6), counted by torch's flop counter.
    s = model_stats("vit_base_patch16_224")
    assert s.gmacs == pytest.approx(17.56, abs=0.01)
