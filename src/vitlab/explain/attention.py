"""Attention probabilities of chosen layers, and attention rollout (Abnar & Zuidema, arXiv 2005.00928).

Only the requested layers leave the fused SDPA path; the flag is restored even when the forward pass fails.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _attention_layers(model: nn.Module) -> list[nn.Module]:
    if hasattr(model, "attention_layers"):
        return list(model.attention_layers())
    return [m for m in model.modules() if hasattr(m, "capture_attn")]


@torch.no_grad()
def attention_maps(model: nn.Module, x: torch.Tensor, layers: Sequence[int] | None = None) -> dict[int, torch.Tensor]:
    """{layer index: (B, H, N, N) attention probabilities} for `layers` (default: all; negatives count back)."""
    attn = _attention_layers(model)
    if not attn:
        raise ValueError(f"{type(model).__name__} has no attention layers")
    L = len(attn)
    wanted = list(range(L)) if layers is None else list(layers)
    for i in wanted:
        if not -L <= i < L:
            raise ValueError(f"attention layer {i} out of range: the model has {L}")
    idx = sorted({i % L for i in wanted})
    try:
        for i in idx:
            attn[i].capture_attn = True
        model.eval()(x)
        return {i: attn[i].attn_probs for i in idx}
    finally:
        for i in idx:
            attn[i].capture_attn = False
            attn[i].attn_probs = None


@torch.no_grad()
def attention_rollout(model: nn.Module, x: torch.Tensor, discard_ratio: float = 0.0) -> torch.Tensor:
    """(B, N, N) product over layers of (mean-over-heads attention + identity), rows renormalised (sec. 3)."""
    maps = attention_maps(model, x)
    result = None
    for i in sorted(maps):
        a = maps[i].mean(dim=1)  # (B, N, N)
        if discard_ratio > 0:
            flat = a.flatten(1)
            k = int(flat.shape[1] * discard_ratio)
            if k:
                low = flat.topk(k, dim=1, largest=False).indices
                flat = flat.scatter(1, low, 0.0)
            a = flat.view_as(a)
        a = a + torch.eye(a.shape[-1], device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    return result
