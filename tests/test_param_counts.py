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
    "convnext_tiny": 28_589_128,
    "convnext_small": 50_223_688,
    "convnext_base": 88_591_464,
    "convnext_large": 197_767_336,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "alexnet": 61_100_840,
    "swin_tiny_patch4_window7_224": 28_288_354,
    "swin_small_patch4_window7_224": 49_606_258,
    "swin_base_patch4_window7_224": 87_768_224,
    "swin_large_patch4_window7_224": 196_532_476,
    "mixer_b16_224": 59_880_472,
    "mixer_l16_224": 208_196_168,
    "cvt_13_224": 19_997_480,
    "cvt_21_224": 31_622_696,
    "lenet5": 61_706,  # C1 156 + C3 2,416 + C5 48,120 + F6 10,164 + output 850
}

# The papers' tables count multiply-adds ("FLOPs"); vitlab's counter must land within 3% of them.
PAPER_GMACS = {
    "cvt_13_224": 4.5,
    "cvt_21_224": 7.1,
    "swin_tiny_patch4_window7_224": 4.5,
    "swin_small_patch4_window7_224": 8.7,
    "swin_base_patch4_window7_224": 15.4,
    "swin_base_patch4_window12_384": 47.0,
    "convnext_tiny": 4.5,
    "convnext_small": 8.7,
    "convnext_base": 15.4,
    "resnet50": 4.1,
}


@pytest.mark.parametrize("name,gmacs", PAPER_GMACS.items())
def test_gmacs_match_paper_tables(name, gmacs):
    assert model_stats(name).gmacs == pytest.approx(gmacs, rel=0.03)


@pytest.mark.parametrize("name,count", COUNTS.items())
def test_param_count(name, count):
    assert model_stats(name, flops=False).params == count


def test_vit_huge_backbone_count():
    # timm's vit_huge_patch14_224 (in21k weights) is headless by default: 630,764,800; a 1000-class head adds 1,281,000.
    assert model_stats("vit_huge_patch14_224", flops=False).params == 630_764_800
    assert model_stats("vit_huge_patch14_224", flops=False, num_classes=1000).params == 630_764_800 + 1280 * 1000 + 1000


def test_hybrid_r50_vit_b16_count():
    # timm's vit_base_r50_s16_224 (in21k weights) is headless: 97,890,112; a 1000-class head adds 769,000
    assert model_stats("vit_base_r50_s16_224", flops=False, num_classes=0).params == 97_890_112


def test_flops_vit_b16():
    # 17.56 GMACs at 224 (timm's table: 17.6), counted by torch's flop counter.
    s = model_stats("vit_base_patch16_224")
    assert s.gmacs == pytest.approx(17.56, abs=0.01)
