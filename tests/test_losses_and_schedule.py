"""Hand-checked numbers for the losses, mixup targets and the learning-rate schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vitlab.data.mixup import mix_batch
from vitlab.engine.optim import param_groups, warmup_cosine
from vitlab.factory import create_model
from vitlab.losses import cross_entropy, distillation_loss, one_hot_smooth


def test_one_hot_smooth():
    t = one_hot_smooth(torch.tensor([1]), 4, smoothing=0.2)
    torch.testing.assert_close(t, torch.tensor([[0.05, 0.85, 0.05, 0.05]]))


def test_soft_cross_entropy_equals_hard_for_one_hot():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    hard = cross_entropy(logits=logits, target=torch.tensor([0]))
    soft = cross_entropy(logits=logits, target=torch.tensor([[1.0, 0.0, 0.0]]))
    expected = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1)))
    assert hard.item() == pytest.approx(expected, rel=1e-6) and soft.item() == pytest.approx(expected, rel=1e-6)


def test_hard_distillation_by_hand():
    cls = torch.tensor([[0.0, 0.0]])
    dist = torch.tensor([[1.0, 0.0]])
    teacher = torch.tensor([[0.0, 5.0]])  # teacher says class 1
    loss = distillation_loss(cls_logits=cls, dist_logits=dist, target=torch.tensor([0]), teacher_logits=teacher)
    ce_cls = math.log(2)
    ce_dist = -math.log(math.exp(0) / (math.exp(1) + 1))
    assert loss.item() == pytest.approx(0.5 * ce_cls + 0.5 * ce_dist, rel=1e-6)


def test_soft_distillation_by_hand():
    dist = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[0.0, math.log(3.0)]])  # teacher probabilities (1/4, 3/4)
    loss = distillation_loss(
        cls_logits=dist, dist_logits=dist, target=torch.tensor([0]), teacher_logits=teacher,
        kind="soft", alpha=1.0, tau=1.0,
    )  # fmt: skip
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert loss.item() == pytest.approx(kl / 2, rel=1e-6)  # divided by the number of logits (DeiT repo)
    with pytest.raises(ValueError, match="hard' or 'soft"):
        distillation_loss(cls_logits=dist, dist_logits=dist, target=torch.tensor([0]), teacher_logits=dist, kind="x")


@pytest.mark.parametrize("mixup,cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixed_targets_are_distributions(mixup, cutmix):
    x = torch.rand(6, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    xm, t = mix_batch(x, y, 3, mixup, cutmix, 0.1, np.random.default_rng(0))
    assert xm.shape == x.shape and t.shape == (6, 3)
    torch.testing.assert_close(t.sum(-1), torch.ones(6))
    assert (t >= 0).all()


def test_warmup_cosine_values():
    f = warmup_cosine(total_steps=110, warmup_steps=10, base_lr=1.0, min_lr=0.0)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0)
    g = warmup_cosine(total_steps=10, warmup_steps=0, base_lr=1.0, min_lr=0.1)
    assert g(10) == pytest.approx(0.1)


def test_no_weight_decay_groups():
    m = create_model("deit_micro_distilled_patch4_8")
    decay, no_decay = param_groups(m, 0.05, 1e-3)
    names = {id(p): n for n, p in m.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    assert {"pos_embed", "cls_token", "dist_token", "blocks.0.norm1.weight", "head.bias"} <= nd
    assert "blocks.0.attn.qkv.weight" in {names[id(p)] for p in decay["params"]}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05


def test_lr_multipliers_make_groups_by_prefix():
    m = create_model("detr_tiny", num_classes=3)
    groups = param_groups(m, 1e-4, 2e-4, m.lr_multipliers(0.1))
    names = {id(p): n for n, p in m.named_parameters()}
    by_lr = {}
    for g in groups:
        by_lr.setdefault(g["lr"], set()).update(names[id(p)] for p in g["params"])
    assert sorted(by_lr) == pytest.approx([2e-5, 2e-4])
    low = by_lr[min(by_lr)]
    assert low and all(n.startswith("backbone.") for n in low)
    assert not any(n.startswith("backbone.") for n in by_lr[max(by_lr)])
    assert sum(len(g["params"]) for g in groups) == len(names)  # every parameter in exactly one group
    assert groups[0]["lr"] == pytest.approx(2e-4)  # the full-lr group first: the engine logs its lr
