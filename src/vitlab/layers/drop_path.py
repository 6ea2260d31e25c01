"""Stochastic depth (Huang et al., arXiv 1603.09382): drop a residual branch per sample."""

from __future__ import annotations

import torch
from torch import nn


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty([x.shape[0]] + [1] * (x.ndim - 1)).bernoulli_(keep).div_(keep)  # (B, 1, ...)
    return x * mask  # one pass over x: the 1/keep scale is folded into the per-sample mask


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
