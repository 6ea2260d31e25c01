"""SimCLR's view augmentation as tensor ops: each op against hand-checked values, and the full recipe's invariants."""

from __future__ import annotations

import colorsys

import pytest
import torch
import torch.nn.functional as F

from vitlab.data import ImageTransform
from vitlab.data.batches import MultiViewBatch, collate_views
from vitlab.data.views import (
    MultiViewDataset,
    ViewAugment,
    color_jitter,
    crop_box,
    gaussian_blur,
    hsv_to_rgb,
    random_resized_crop,
    rgb_to_hsv,
)


def test_hsv_round_trip_equals_colorsys():
    x = torch.rand(3, 5, 7, dtype=torch.float64)
    x[:, 0, 0] = 0.5  # a grey pixel (no hue), and a black one
    x[:, 0, 1] = 0.0
    hsv = rgb_to_hsv(x)
    for i, j in [(0, 0), (0, 1), (2, 3), (4, 6)]:
        assert hsv[:, i, j].tolist() == pytest.approx(colorsys.rgb_to_hsv(*x[:, i, j].tolist()), abs=1e-9)
    assert torch.allclose(hsv_to_rgb(hsv), x, atol=1e-9)


def test_gaussian_blur_of_a_point_is_the_kernel():
    x = torch.zeros(1, 9, 9, dtype=torch.float64)
    x[0, 4, 4] = 1.0
    sigma = 0.8
    t = torch.arange(-1, 2, dtype=torch.float64)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()  # 3 taps: e^(-1 / 1.28) = 0.45783 around 1, over their sum 1.91566
    assert k.tolist() == pytest.approx([0.238994, 0.522011, 0.238994], abs=1e-6)
    y = gaussian_blur(x, 3, sigma)
    assert torch.allclose(y[0, 3:6, 3:6], k[:, None] * k[None, :])
    assert y.sum().item() == pytest.approx(1.0) and y[0, :3].abs().max() == 0
    flat = torch.full((3, 6, 6), 0.3)
    assert torch.allclose(gaussian_blur(flat, 5, 2.0), flat)  # reflect padding keeps a constant image constant
    with pytest.raises(ValueError, match="odd"):
        gaussian_blur(x, 4, 1.0)


def test_crop_box_respects_scale_and_ratio():
    torch.manual_seed(0)
    for _ in range(200):
        top, left, h, w = crop_box(28, 28, (0.25, 1.0), (3 / 4, 4 / 3))
        assert top >= 0 and left >= 0 and top + h <= 28 and left + w <= 28
        assert 0.25 * 784 * 0.85 <= h * w <= 784  # rounding to whole pixels moves the area a little
        assert 3 / 4 * 0.85 <= w / h <= 4 / 3 * 1.15
    # a ratio range the image cannot meet: the centre crop of the nearest ratio
    assert crop_box(10, 40, (0.99, 1.0), (1.0, 1.0)) == (0, 15, 10, 10)


def test_full_crop_is_a_resize():
    x = torch.rand(3, 20, 20)
    y = random_resized_crop(x, 10, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(y, F.interpolate(x[None], size=(10, 10), mode="bilinear", antialias=True)[0])


def test_colour_jitter_on_grey_touches_only_brightness_and_contrast():
    g = 0.1 + 0.3 * torch.rand(1, 6, 6)  # levels 0.1..0.4: a brightness factor up to 1.5 never clips
    assert torch.equal(color_jitter(g, 0.0, 0.0, 0.8, 0.2), g)  # saturation and hue: nothing to do on grey
    y = color_jitter(g, 0.5, 0.0, 0.0, 0.0)
    f = y / g  # one factor for every pixel, in [0.5, 1.5]
    assert torch.allclose(f, f.flatten()[0].expand_as(f), atol=1e-5) and 0.5 <= f.flatten()[0] <= 1.5
    c = color_jitter(g, 0.0, 0.5, 0.0, 0.0)  # contrast: a blend with the mean keeps the mean
    assert c.mean().item() == pytest.approx(g.mean().item(), abs=1e-5)
    rgb = torch.rand(3, 6, 6)
    hue_only = color_jitter(rgb, 0.0, 0.0, 0.0, 0.5)
    assert torch.allclose(rgb_to_hsv(hue_only)[1:], rgb_to_hsv(rgb)[1:], atol=1e-5)  # hue moves, S and V stay


def test_view_augment_without_randomness_is_the_eval_transform():
    img = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    aug = ViewAugment(32, 3, mean, std, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=0, jitter=0, grey=0, blur=0)
    ref = ImageTransform(32, 3, mean, std)
    assert torch.allclose(aug(img), ref(img), atol=1e-6)


def test_views_are_random_and_shaped_for_the_model():
    torch.manual_seed(0)
    img = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    for aug in (ViewAugment.simclr(16, 3, (0.5,) * 3, (0.5,) * 3), ViewAugment.small(16, 1, (0.5,), (0.5,))):
        a, b = aug(img), aug(img)
        assert a.shape == (aug.in_chans, 16, 16) and torch.isfinite(a).all() and not torch.equal(a, b)
        assert a.min() >= -1 - 1e-5 and a.max() <= 1 + 1e-5  # (x - 0.5) / 0.5 of values in [0, 1]
    assert ViewAugment.simclr(224, 3, (0.5,) * 3, (0.5,) * 3).blur_kernel == 23  # 10% of the side, odd
    small = ViewAugment.small(28, 1, (0.5,), (0.5,))
    assert small.hflip == 0 and small.blur_kernel == 3 and small.crop_scale == (0.25, 1.0)
    with pytest.raises(ValueError, match="probability"):
        ViewAugment(8, 1, (0.5,), (0.5,), grey=2.0)


def test_two_view_dataset_collates_into_a_multiview_batch():
    base = [(torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8), i % 3) for i in range(5)]
    aug = ViewAugment.small(16, 1, (0.5,), (0.5,))
    ds = MultiViewDataset(base, [aug, aug])
    batch = collate_views([ds[i] for i in range(5)])
    assert isinstance(batch, MultiViewBatch) and len(batch) == 5 and len(batch.views) == 2
    assert batch.views[0].shape == (5, 1, 16, 16) and batch.labels.tolist() == [0, 1, 2, 0, 1]
    assert not torch.equal(batch.views[0], batch.views[1])
    unlabeled = collate_views([MultiViewDataset(base, [aug, aug], labels=False)[i] for i in range(2)])
    assert unlabeled.labels is None
