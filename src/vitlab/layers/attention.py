"""Multi-head self-attention on the fast path, with attention probabilities on request.

The normal path calls ``F.scaled_dot_product_attention`` (fused kernels, no (N, N) matrix kept for backward).
Setting ``capture_attn = True`` on one layer makes only that layer compute the softmax explicitly and keep it in
``attn_probs`` — this is how ``vitlab.explain`` reads attention maps without slowing the other layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Shapes: x (B, N, D) -> (B, N, D); probabilities (B, H, N, N) when captured."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"embed_dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        # One fused projection: a single GEMM for q, k and v (timm's layout, so its weights load as they are).
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.capture_attn = False
        self.attn_probs: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, Dh)
        drop = self.attn_drop if self.training else 0.0
        if self.capture_attn:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, N, N)
            attn = attn.softmax(dim=-1)
            self.attn_probs = attn.detach()
            x = F.dropout(attn, drop) @ v
        else:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        x = x.transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        return self.proj_drop(self.proj(x))
