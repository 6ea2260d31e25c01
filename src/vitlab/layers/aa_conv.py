"""Attention-augmented convolution: a conv's output channels concatenated with global self-attention channels.

Bello, Zoph, Vaswani, Shlens & Le, "Attention Augmented Convolutional Networks", ICCV 2019, arXiv 1904.09925,
Sec. 3:

    AAConv(X) = Concat[Conv(X), MHA(X)]

Conv gives F_out - d_v channels; MHA is multi-head self-attention over all H·W positions with N_h heads, queries and
keys of width d_k, values of width d_v (1×1 projections of the input), the heads concatenated and mixed by a 1×1
projection W^O (d_v -> d_v). Its logits carry 2-D relative position logits (Sec. 3.2):

    l_{i,j} = q_iᵀ (k_j + r^W_{j_x - i_x} + r^H_{j_y - i_y}) / sqrt(d_k^h)

with learned relative width and height embeddings of the head width d_k^h = d_k / N_h, so the layer is translation
equivariant. The paper computes them with a relative-to-absolute reshaping trick; here they are gathered from the
tables by offset (the same numbers, more memory: (H, W, W) and (H, W, H) logits per head).

How this differs from the paper and its code: the embeddings are shared by the heads; tables are sized for the map
the layer was built for (`map_size`), and larger maps share the outermost embedding for offsets beyond it (Shaw et
al.'s clipping) instead of failing; a strided augmented conv (ResNet's downsampling blocks) runs its attention on the
input average-pooled 2×2, at the conv's output size.

Attention maps: the softmax runs through `vitlab.layers.attend` (SDPA unless asked), and the layer has the
`capture_attn` / `attn_probs` pair every attention layer of vitlab has (`vitlab.explain.capture_attention`):
probabilities (B, N_h, N, N) over the positions of the map attention runs on.

Shapes: x (B, C, H, W) -> (B, F_out, H', W'), H' = ceil(H / stride); N = H'·W'.
"""

from __future__ import annotations

import torch
from torch import nn

from vitlab.errors import ConfigError
from vitlab.layers.attention import attend


class AugmentedConv2d(nn.Module):
    """A k×k conv to F_out - d_v channels beside multi-head relative self-attention to d_v channels."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 3,
        stride: int = 1,
        key_dim: int = 40,
        value_dim: int = 20,
        num_heads: int = 4,
        map_size: int = 14,
        relative: bool = True,
    ) -> None:
        """key_dim, value_dim: d_k and d_v (the paper's κ = d_k / F_out and υ = d_v / F_out). map_size: the largest
        side the relative tables cover exactly. relative: False drops the relative logits (content only)."""
        super().__init__()
        for name, d in (("key_dim", key_dim), ("value_dim", value_dim)):
            if d < num_heads or d % num_heads != 0:
                raise ConfigError(f"AugmentedConv2d: {name}={d} must be a positive multiple of num_heads={num_heads}")
        if value_dim >= out_chans:
            raise ConfigError(f"AugmentedConv2d: value_dim={value_dim} leaves no conv channel of {out_chans} outputs")
        if stride not in (1, 2):
            raise ConfigError(f"AugmentedConv2d: stride must be 1 or 2, got {stride}")
        if map_size < 1:
            raise ConfigError(f"AugmentedConv2d: map_size must be >= 1, got {map_size}")
        self.in_chans, self.out_chans, self.stride = in_chans, out_chans, stride
        self.key_dim, self.value_dim, self.num_heads, self.map_size = key_dim, value_dim, num_heads, map_size
        self.key_head, self.value_head = key_dim // num_heads, value_dim // num_heads
        self.conv = nn.Conv2d(in_chans, out_chans - value_dim, kernel_size, stride, kernel_size // 2, bias=False)
        self.pool = nn.AvgPool2d(2, ceil_mode=True) if stride == 2 else nn.Identity()
        self.to_qkv = nn.Conv2d(in_chans, 2 * key_dim + value_dim, 1)
        self.proj = nn.Conv2d(value_dim, value_dim, 1)  # W^O
        self.relative = relative
        std = self.key_head**-0.5
        # offset o in [-(map_size - 1), map_size - 1] at row o + map_size - 1
        self.rel_width = nn.Parameter(torch.randn(2 * map_size - 1, self.key_head) * std)
        self.rel_height = nn.Parameter(torch.randn(2 * map_size - 1, self.key_head) * std)
        self.capture_attn = False  # set by vitlab.explain.capture_attention for the layers it is asked for
        self.attn_probs: torch.Tensor | None = None

    def _offsets(self, n: int, device: torch.device) -> torch.Tensor:
        """(n, n) rows of the relative table for (query position, key position) along one axis."""
        pos = torch.arange(n, device=device)
        m = self.map_size - 1
        return (pos[None, :] - pos[:, None]).clamp(-m, m) + m

    def relative_logits(self, q: torch.Tensor) -> torch.Tensor:
        """(B, Nh, H, W, dkh) scaled queries -> (B, Nh, N, N) relative logits q_iᵀ (r^W + r^H)."""
        B, Nh, H, W, _ = q.shape
        ew = self.rel_width[self._offsets(W, q.device)]  # (W, W', dkh)
        eh = self.rel_height[self._offsets(H, q.device)]  # (H, H', dkh)
        lw = torch.einsum("bhyxd,xzd->bhyxz", q, ew)  # (B, Nh, H, W, W')
        lh = torch.einsum("bhyxd,ytd->bhyxt", q, eh)  # (B, Nh, H, W, H')
        return (lh[..., :, None] + lw[..., None, :]).reshape(B, Nh, H * W, H * W)  # key (y', x') row-major

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv(x)  # (B, F_out - dv, H', W')
        a = self.pool(x)  # (B, C, H', W')
        B, _, H, W = a.shape
        Nh, dkh, dvh = self.num_heads, self.key_head, self.value_head
        q, k, v = self.to_qkv(a).split([self.key_dim, self.key_dim, self.value_dim], dim=1)
        q = q.reshape(B, Nh, dkh, H, W).permute(0, 1, 3, 4, 2) * dkh**-0.5  # (B, Nh, H, W, dkh)
        k = k.reshape(B, Nh, dkh, H * W).transpose(2, 3)  # (B, Nh, N, dkh)
        v = v.reshape(B, Nh, dvh, H * W).transpose(2, 3)  # (B, Nh, N, dvh)
        bias = self.relative_logits(q) if self.relative else None
        out, probs = attend(q.reshape(B, Nh, H * W, dkh), k, v, bias=bias, scale=1.0, capture=self.capture_attn)
        if not torch.jit.is_scripting() and probs is not None:  # capture is for eager models (vitlab.explain)
            self.attn_probs = probs.detach()  # (B, Nh, N, N)
        out = out.transpose(2, 3).reshape(B, Nh * dvh, H, W)  # heads concatenated: (B, dv, H', W')
        return torch.cat([conv, self.proj(out)], dim=1)  # (B, F_out, H', W')
