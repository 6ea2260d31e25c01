"""Transformer feed-forward blocks: Linear -> activation -> Linear, and the SwiGLU variant of DINOv2's ViT-g."""

from __future__ import annotations

import torch
from torch import nn


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class SwiGLU(nn.Module):
    """SwiGLU feed-forward (Shazeer, "GLU Variants Improve Transformer", arXiv 2002.05202): fc2(silu(a) * b).

    One packed input projection `fc1` (D -> 2h: the gate a, then the value b), as DINOv2's `w12` and timm's
    `SwiGLUPacked`, so both load by renaming; transformers' gate_proj / up_proj are its two halves.
    """

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * hidden_dim)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.fc1(x).chunk(2, dim=-1)  # each (B, N, h)
        return self.drop2(self.fc2(self.drop1(nn.functional.silu(gate) * value)))


def swiglu_hidden(dim: int, mlp_ratio: float) -> int:
    """DINOv2's SwiGLU width: 2/3 of the plain MLP's (same parameter count), rounded up to a multiple of 8."""
    return (int(int(dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8
