"""Scaled dot-product attention for every family, on the fast path, with probabilities on request.

"Attention Is All You Need" (Vaswani et al., arXiv 1706.03762), eq. 1: softmax(q k^T * scale + bias) v.

`attend` is the one attention function of vitlab: ViT's `Attention` below, Swin's window attention (relative
position bias + shift mask as `bias`) and CvT's convolutional attention (k/v on a subsampled grid) all call it.
The normal path is ``F.scaled_dot_product_attention`` (fused kernels, no (Nq, Nk) matrix kept for backward);
``capture=True`` computes the softmax explicitly and returns it. Each attention layer has a ``capture_attn`` flag
and keeps the probabilities of its last forward in ``attn_probs`` when the flag is set — this is how
`vitlab.explain.capture_attention` reads the layers it is asked for without slowing the others.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.fx import is_tracing


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    capture: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """softmax(q k^T * scale + bias) v, and the probabilities when `capture` is set.

    Shapes: q (B, H, Nq, Dh), k and v (B, H, Nk, Dh), bias broadcastable to (B, H, Nq, Nk)
    -> out (B, H, Nq, Dh), probs (B, H, Nq, Nk) (before dropout) or None. `scale` defaults to Dh^-0.5.
    Both paths give the same output up to float rounding; `dropout_p` applies as given (pass 0 in eval mode).
    Pass the options by keyword (not keyword-only in the signature because TorchScript compiles this function).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    # With a bias that needs a gradient (Swin's relative position table while training) SDPA's fused CPU kernel
    # cannot return that gradient and falls back to a slower composite; the explicit softmax is faster there
    # (measured in benchmarks/README.md, "Swin training"). GPUs keep SDPA's kernel, and so do traced graphs.
    explicit = capture or (bias is not None and not is_tracing() and bias.requires_grad and q.device.type == "cpu")
    if not explicit:
        mask = None if bias is None else bias.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale), None
    attn = (q * scale) @ k.transpose(-2, -1)  # (B, H, Nq, Nk)
    if bias is not None:
        attn = attn + bias
    attn = attn.softmax(dim=-1)
    out = (F.dropout(attn, dropout_p) if dropout_p > 0 else attn) @ v  # (B, H, Nq, Dh)
    return out, attn if capture else None


class Attention(nn.Module):
    """Multi-head self-attention over one token set. Shapes: x (B, N, D) -> (B, N, D); probabilities (B, H, N, N)."""

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
        self.capture_attn = False  # set by vitlab.explain.capture_attention for the layers it is asked for
        self.attn_probs: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, Dh)
        drop = self.attn_drop if self.training else 0.0
        x, probs = attend(q, k, v, dropout_p=drop, scale=self.scale, capture=self.capture_attn)
        if not torch.jit.is_scripting() and probs is not None:  # capture is for eager models (vitlab.explain)
            self.attn_probs = probs.detach()  # (B, H, N, N)
        x = x.transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        return self.proj_drop(self.proj(x))


class MaskedAttention(Attention):
    """`Attention` with an optional additive mask (CLIP's causal mask, BERT's padding mask).

    Shapes: x (B, N, D), mask broadcastable to (B, H, N, N) -> (B, N, D).
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, Dh)
        x, probs = attend(q, k, v, bias=mask, scale=self.scale, capture=self.capture_attn)
        if probs is not None:
            self.attn_probs = probs.detach()  # (B, H, N, N), for vitlab.explain
        return self.proj(x.transpose(1, 2).reshape(B, N, D))  # (B, N, D)
