"""Frozen-feature evaluation: weighted cosine k-NN by hand, the linear probe, and the evaluator over bank + queries."""

from __future__ import annotations

import math

import pytest
import torch

from vitlab.data.batches import collate_features
from vitlab.engine.evaluators.knn import (
    BankAndQueries,
    RepresentationEvaluator,
    encoder_features,
    knn_classify,
    linear_probe,
)


def test_knn_weighted_votes_by_hand():
    # bank on the unit circle: class 0 at 0 and 60 degrees, class 1 at 100 degrees; the query at 80 degrees
    deg = torch.tensor([0.0, 60.0, 100.0]) * math.pi / 180
    bank = torch.stack([deg.cos(), deg.sin()], 1)
    labels = torch.tensor([0, 0, 1])
    q = torch.tensor([[math.cos(math.radians(80)), math.sin(math.radians(80))]])
    # k=3, T=0.1: weights exp(cos(80)/T), exp(cos(20)/T), exp(cos(20)/T) -> class 0: e^1.736 + e^9.397, class 1 e^9.397
    assert knn_classify(bank, labels, q, num_classes=2, k=3, temperature=0.1).tolist() == [0]
    # k=1: the nearest only; 60 and 100 degrees tie at 20 degrees away, so move the query to 85: class 1
    q85 = torch.tensor([[math.cos(math.radians(85)), math.sin(math.radians(85))]])
    assert knn_classify(bank, labels, q85, num_classes=2, k=1).tolist() == [1]
    # k=3 at 85 degrees: class 0 gets exp(cos 85 / T) + exp(cos 25 / T), class 1 exp(cos 15 / T)
    T = 0.07
    w0 = math.exp(math.cos(math.radians(85)) / T) + math.exp(math.cos(math.radians(25)) / T)
    w1 = math.exp(math.cos(math.radians(15)) / T)
    assert w1 > w0  # the temperature makes the nearest dominate
    assert knn_classify(bank, labels, q85, num_classes=2, k=3, temperature=T).tolist() == [1]
    # a high temperature counts heads: two class-0 votes beat one
    assert knn_classify(bank, labels, q85, num_classes=2, k=3, temperature=100.0).tolist() == [0]
    # scale does not matter (cosine); k above the bank size is capped
    assert knn_classify(5 * bank, labels, 0.1 * q85, num_classes=2, k=50, temperature=100.0).tolist() == [0]
    with pytest.raises(ValueError, match="temperature"):
        knn_classify(bank, labels, q, num_classes=2, temperature=0.0)


def test_linear_probe_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=g) * 3
    y = torch.arange(90) % 3
    x = centres[y] + torch.randn(90, 8, generator=g) * 0.5
    ty = torch.arange(30) % 3
    tx = centres[ty] + torch.randn(30, 8, generator=g) * 0.5
    assert (linear_probe(x, y, tx) == ty).float().mean().item() == 1.0
    assert linear_probe(x[:3], torch.zeros(3, dtype=torch.long), tx).tolist() == [0] * 30  # one class: that class


class _Encoder(torch.nn.Module):
    """forward_features -> tokens; forward_head(pre_logits=True) -> their mean; the head would be the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 6)
        self.head = torch.nn.Linear(6, 2)

    def forward_features(self, x):
        return self.proj(x.flatten(2).transpose(1, 2))  # (B, N, D)

    def forward_head(self, x, pre_logits=False):
        x = x.mean(1)
        return x if pre_logits else self.head(x)


def test_encoder_features_skip_the_head():
    m = _Encoder()
    x = torch.randn(3, 4, 2, 2)
    f = encoder_features(m, x)
    assert f.shape == (3, 6) and torch.allclose(f, m.proj(x.flatten(2).transpose(1, 2)).mean(1))


def test_evaluator_over_bank_and_queries():
    # images whose pixel pattern is their class: a fixed encoder separates them, so k-NN and probe are perfect
    g = torch.Generator().manual_seed(0)
    protos = torch.rand(2, 1, 2, 2, generator=g) * 255

    def images(n):
        y = torch.arange(n) % 2
        imgs = (protos[y] + torch.rand(n, 1, 2, 2, generator=g) * 10).clamp(0, 255).to(torch.uint8)
        return list(zip(imgs, y.tolist(), strict=True))

    ds = BankAndQueries(images(20), images(6), lambda img: img.float().expand(4, -1, -1) / 255)
    assert len(ds) == 26 and ds[0][2] is True and ds[20][2] is False
    ev = RepresentationEvaluator(num_classes=2, k=5)
    torch.manual_seed(0)
    m = _Encoder()
    for i in range(0, 26, 8):  # batches that straddle the bank / query boundary
        ev.update(m, collate_features([ds[j] for j in range(i, min(i + 8, 26))]))
    r = ev.compute()
    assert r.bank == 20 and r.count == 6 and r.k == 5
    assert set(r.metrics) == {"knn_top1", "probe_top1"} and 0 <= r.knn_top1 <= 1 and 0 <= r.probe_top1 <= 1
    assert len(r.per_class_knn) == 2
    ev_no_probe = RepresentationEvaluator(num_classes=2, k=5, probe=False)
    ev_no_probe.update(m, collate_features([ds[j] for j in range(26)]))  # one batch: the same split of roles
    r2 = ev_no_probe.compute()
    assert set(r2.metrics) == {"knn_top1"} and r2.knn_top1 == r.knn_top1 and math.isnan(r2.probe_top1)
    empty = RepresentationEvaluator(num_classes=2)
    empty.update(m, collate_features([ds[j] for j in range(20)]))  # no queries
    with pytest.raises(ValueError, match="reference and test"):
        empty.compute()
