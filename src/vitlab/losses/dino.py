"""DINO's self-distillation: the cross-view loss, centering, and the schedules of the teacher.

"Emerging Properties in Self-Supervised Vision Transformers" (Caron et al., arXiv 2104.14294), sec. 3.1 and
Algorithm 1: the teacher's output is centred (c, an EMA of its batch means, momentum 0.9) and sharpened (temperature
tau_t, warmed up 0.04 -> 0.07); the student's is softened at tau_s = 0.1; the loss is the cross-entropy
-sum q_t log p_s over every pair of a teacher view (the 2 global crops) and a *different* student view (globals and
locals), averaged over pairs; the teacher is an EMA of the student whose momentum follows a cosine from 0.996 to 1.

Pure functions; the method (`vitlab.methods.dino`) holds the state. Under DDP the center's batch mean is the mean over
every rank's teacher outputs (an all-reduce), so all ranks keep the same center (the official `update_center`).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = [
    "cosine_momentum",
    "dino_loss",
    "ema_update_",
    "teacher_probs",
    "teacher_temperature",
    "update_center",
]


def teacher_probs(teacher_logits: torch.Tensor, center: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax((t - c) / tau_t): centred and sharpened. Shapes: (B, K), center (1, K) -> (B, K)."""
    return F.softmax((teacher_logits - center) / temperature, dim=-1)


def dino_loss(
    *,
    student_logits: list[torch.Tensor],
    teacher_logits: list[torch.Tensor],
    center: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, collapse statistics) of one multi-crop batch.

    student_logits: one (B, K) per view, the teacher's views first (view v of the student is view v of the teacher
    for v < len(teacher_logits)); teacher_logits: one (B, K) per global view (no gradient flows into them).
    Statistics (detached): `teacher_entropy`, the mean entropy of the teacher's distributions, and `kl`, the mean
    KL(teacher || student) over the loss's pairs; collapse to one prototype drives both to 0, collapse to the uniform
    distribution drives the entropy to log K (sec. 5.3, Fig. 7).
    """
    if len(student_logits) < 2 or not teacher_logits or len(teacher_logits) > len(student_logits):
        raise ValueError(
            f"dino_loss needs >= 2 student views and 1..{len(student_logits)} teacher views, got "
            f"{len(student_logits)} and {len(teacher_logits)}"
        )
    q = [teacher_probs(t.detach(), center, teacher_temp) for t in teacher_logits]
    log_p = [F.log_softmax(s / student_temp, dim=-1) for s in student_logits]
    total, kl, pairs = 0.0, 0.0, 0
    for i, qi in enumerate(q):
        log_qi = torch.log(qi.clamp_min(1e-30))
        for v, lp in enumerate(log_p):
            if v == i:  # the same view: no pair (the teacher would teach the student its own crop)
                continue
            total = total + torch.sum(-qi * lp, dim=-1).mean()
            kl = kl + torch.sum(qi * (log_qi - lp.detach()), dim=-1).mean()
            pairs += 1
    entropy = torch.stack([-(qi * torch.log(qi.clamp_min(1e-30))).sum(-1).mean() for qi in q]).mean()
    return total / pairs, {"teacher_entropy": entropy.detach(), "kl": (kl / pairs).detach()}


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """c <- m c + (1 - m) mean(teacher outputs), the mean over every rank's rows under DDP. Shapes: (1, K), (N, K).

    Returns the new center (the argument is not modified).
    """
    total = teacher_logits.sum(dim=0, keepdim=True)  # (1, K)
    count = torch.tensor([teacher_logits.shape[0]], dtype=total.dtype, device=total.device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
        dist.all_reduce(count)
    return center * momentum + (total / count) * (1 - momentum)


def cosine_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """The teacher's EMA momentum at optimizer step `step` of `total_steps`: base at 0, final at the end (cosine)."""
    t = min(max(step, 0), total_steps) / max(total_steps, 1)
    return final - (final - base) * (math.cos(math.pi * t) + 1) / 2


def teacher_temperature(epoch: int, warmup_epochs: int, start: float = 0.04, end: float = 0.07) -> float:
    """tau_t for 0-based `epoch`: linear from `start` (epoch 0) to `end` (epoch warmup_epochs - 1), then `end`
    (the official schedule: np.linspace(start, end, warmup_epochs), then constant)."""
    if epoch >= warmup_epochs:
        return end
    if warmup_epochs == 1:
        return start
    return start + (end - start) * epoch / (warmup_epochs - 1)


@torch.no_grad()
def ema_update_(teacher: torch.nn.Module, student: torch.nn.Module, momentum: float) -> None:
    """teacher <- m teacher + (1 - m) student, parameter by parameter (buffers copied); in place."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)
