"""DeiT distillation loss (Touvron et al., arXiv 2012.12877, sec. 5).

loss = (1 - alpha) * CE(class head, labels) + alpha * KD(distillation head, teacher), with
hard KD = CE(distillation head, argmax teacher), soft KD = KL(softmax(teacher / tau) || softmax(student / tau)) tau^2.
The soft term is summed and divided by the number of logits, as the DeiT repository's `DistillationLoss` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vitlab.losses.classification import cross_entropy


def distillation_kd(
    *, dist_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "hard", tau: float = 1.0
) -> torch.Tensor:
    """The distillation term alone: CE against the teacher's argmax (hard) or the tau-softened KL (soft)."""
    teacher_logits = teacher_logits.detach().float()
    if kind == "hard":
        return F.cross_entropy(dist_logits.float(), teacher_logits.argmax(dim=-1))
    if kind == "soft":
        return F.kl_div(
            F.log_softmax(dist_logits.float() / tau, dim=-1),
            F.log_softmax(teacher_logits / tau, dim=-1),
            reduction="sum",
            log_target=True,
        ) * (tau * tau / dist_logits.numel())
    raise ValueError(f"distillation kind must be 'hard' or 'soft', got {kind!r}")


def distillation_loss(
    *,
    cls_logits: torch.Tensor,
    dist_logits: torch.Tensor,
    target: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: str = "hard",
    alpha: float = 0.5,
    tau: float = 1.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """(1 - alpha) CE(class head, target) + alpha KD(distillation head, teacher): the paper's formula in one call."""
    kd = distillation_kd(dist_logits=dist_logits, teacher_logits=teacher_logits, kind=kind, tau=tau)
    base = cross_entropy(logits=cls_logits, target=target, label_smoothing=label_smoothing)
    return (1 - alpha) * base + alpha * kd
