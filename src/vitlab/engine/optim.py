"""AdamW with the usual no-decay groups, and a per-step linear warm-up + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, lr: float, lr_multipliers: dict | None = None) -> list[dict]:
    """No weight decay on 1-D parameters (norms, biases) and on what the model names (position embeddings, tokens).

    lr_multipliers: parameter-name prefix -> factor on `lr` (DETR's backbone at lr / 10); the first prefix that
    matches applies, others train at `lr`. The schedule scales every group's lr alike.
    """
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    prefixes = list((lr_multipliers or {}).items())
    groups: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        scale = next((m for prefix, m in prefixes if name.startswith(prefix)), 1.0)
        groups.setdefault((scale, p.ndim <= 1 or name in skip), []).append(p)
    return [
        {"params": ps, "weight_decay": 0.0 if no_decay else weight_decay, "lr": lr * scale}
        for (scale, no_decay), ps in sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1]))
    ]


def warmup_cosine(total_steps: int, warmup_steps: int, base_lr: float, min_lr: float):
    """LR multiplier for LambdaLR: linear 0 -> 1 over warm-up, then cosine down to min_lr / base_lr."""
    floor = min_lr / base_lr if base_lr > 0 else 0.0

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return factor


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    lr_multipliers: dict | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, weight_decay, lr, lr_multipliers), lr=lr, betas=betas)
