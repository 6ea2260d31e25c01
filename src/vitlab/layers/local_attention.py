"""Stand-alone local self-attention (SASA): attention over each pixel's k×k neighbourhood, a drop-in for a conv.

Ramachandran, Parmar, Vaswani, Bello, Levskaya & Shlens, "Stand-Alone Self-Attention in Vision Models", NeurIPS
2019, arXiv 1906.05909, Sec. 2.2 (eq. 3):

    y_ij = Σ_{a,b ∈ N_k(i,j)} softmax_ab(q_ijᵀ k_ab + q_ijᵀ r_{a-i, b-j}) v_ab

with q, k, v 1×1 projections of the input and r_{a-i,b-j} the concatenation of a row-offset embedding r_{a-i} and a
column-offset embedding r_{b-j}, half the width each, so that the layer is translation equivariant. Multi-head: the
output channels split into `num_heads` groups, each attending on its own. Downsampling (stride 2) is a 2×2 average
pool after the attention (Sec. 3).

How this differs from the paper and its code: the logits are scaled by Dh^-1/2 (the paper's eq. 3 has no scale;
this is the Transformer's and AA-conv's convention, which only changes the softmax temperature at initialisation);
the relative embeddings have the head width Dh (Dh/2 rows, Dh/2 columns) and are shared by the heads; neighbours
that fall outside the image are left out of the softmax (masked), not attended as zero padding, so that a window
covering the whole image is exactly global attention (tested). Two exact ways compute it (`local_attention`): on
maps of at most 4k² positions one (N, N) product masked to the windows (a few large matrix products, several times
faster on CPU than gathering windows there); on larger maps the k×k windows gathered by `F.unfold`, which holds k²
copies of the keys and values (not a memory-lean kernel). The FLOP counter sees whichever one runs.

Attention maps: like every attention layer of vitlab, the layer has a `capture_attn` flag and keeps its last
probabilities in `attn_probs` when the flag is set (`vitlab.explain.capture_attention`), scattered onto the full
(N, N) grid of the layer's input (zeros outside each window), so that the explain tools see one shape for every
layer. That dense map is N² per head and image: capture small maps only.

Shapes: x (B, C, H, W) -> (B, D, H / stride, W / stride); N = H·W positions, K = k² window positions, Hh heads of
width Dh = D / Hh.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.errors import ConfigError
from vitlab.fx import notrace, notrace_module
from vitlab.layers.attention import attend


@notrace_module  # its geometry is its own (`receptive_steps`), not that of the ops inside
class LocalSelfAttention(nn.Module):
    """Multi-head self-attention of each pixel over its k×k neighbourhood, with 2-D relative position embeddings."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 7,
        num_heads: int = 8,
        stride: int = 1,
        qkv_bias: bool = False,
    ) -> None:
        """kernel_size: the spatial extent k (odd; the paper's ResNets use 7). stride: 1, or 2 for a 2×2 average
        pool after the attention (the paper's downsampling)."""
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"LocalSelfAttention: kernel_size must be odd and >= 1, got {kernel_size}")
        if out_chans % num_heads != 0:
            raise ConfigError(f"LocalSelfAttention: out_chans={out_chans} must be divisible by num_heads={num_heads}")
        head_dim = out_chans // num_heads
        if head_dim < 2:
            raise ConfigError(f"LocalSelfAttention: heads of width {head_dim}; the row/column embeddings need >= 2")
        if stride not in (1, 2):
            raise ConfigError(f"LocalSelfAttention: stride must be 1 or 2, got {stride}")
        self.in_chans, self.out_chans = in_chans, out_chans
        self.kernel_size, self.num_heads, self.head_dim, self.stride = kernel_size, num_heads, head_dim, stride
        self.row_dim = head_dim // 2  # the query's first half meets the row offset, the rest the column offset
        self.scale = head_dim**-0.5
        self.to_qkv = nn.Conv2d(in_chans, 3 * out_chans, 1, bias=qkv_bias)
        # offsets -(k//2) .. k//2, index 0 = the farthest neighbour above (rows) / to the left (columns)
        self.rel_row = nn.Parameter(torch.randn(kernel_size, self.row_dim) * head_dim**-0.5)
        self.rel_col = nn.Parameter(torch.randn(kernel_size, head_dim - self.row_dim) * head_dim**-0.5)
        self.pool = nn.AvgPool2d(2, ceil_mode=True) if stride == 2 else nn.Identity()
        self.capture_attn = False  # set by vitlab.explain.capture_attention for the layers it is asked for
        self.attn_probs: torch.Tensor | None = None

    @torch.jit.unused
    def receptive_steps(self) -> list[tuple[str, str, int, int, float, int]]:
        """(name suffix, kind, kernel, stride, padding, dilation) of each spatial step, for
        `vitlab.explain.receptive_fields`: the k×k window (as a conv of that size: every pixel of it can change the
        output), then the 2×2 pool of a strided layer."""
        k = self.kernel_size
        steps = [("", "attn", k, 1, float(k // 2), 1)]
        return steps + ([(".pool", "avgpool", 2, 2, 0.0, 1)] if self.stride == 2 else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        q, k, v = self.to_qkv(x).chunk(3, dim=1)  # each (B, D, H, W)
        out, probs = local_attention(
            q * self.scale, k, v, self.rel_row, self.rel_col, self.num_heads, self.kernel_size, self.capture_attn
        )  # (B, D, H, W), (B, Hh, N, N) or None
        # capture is for eager models (vitlab.explain); the flag, not `probs`, decides: a traced graph has no None
        if not torch.jit.is_scripting() and self.capture_attn and probs is not None:
            self.attn_probs = probs.detach()
        return self.pool(out)  # (B, D, H/s, W/s)


@notrace  # branches on the map size: one opaque call in a traced graph
def local_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_row: torch.Tensor,
    rel_col: torch.Tensor,
    num_heads: int,
    kernel_size: int,
    capture: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eq. 3 for scaled queries q and keys/values k, v (B, D, H, W) -> (out (B, D, H, W), probabilities or None).

    Two exact ways to the same numbers: on small maps (N <= 4K, the window covers much of the map) one (N, N)
    product masked to the windows, a few large matrix products; on larger ones the k×k windows gathered by unfold,
    N·K logits instead of N². Probabilities, when `capture` is set, are (B, Hh, N, N) on the full grid either way.
    """
    B, D, H, W = q.shape
    Hh = num_heads
    Dh, N, K, r = D // Hh, H * W, kernel_size * kernel_size, kernel_size // 2
    half = rel_row.shape[1]
    qh = q.reshape(B, Hh, Dh, N)  # (B, Hh, Dh, N)
    rows = torch.einsum("bhdn,id->bhin", qh[:, :, :half], rel_row)  # (B, Hh, k, N): q · r_row per row offset
    cols = torch.einsum("bhdn,jd->bhjn", qh[:, :, half:], rel_col)  # (B, Hh, k, N): q · r_col per column offset
    if N <= 4 * K:
        pos = torch.arange(N, device=q.device)
        dr = (pos // W)[None, :] - (pos // W)[:, None] + r  # (N, N): row offset of key m from query n, + r
        dc = (pos % W)[None, :] - (pos % W)[:, None] + r
        inside = (dr >= 0) & (dr < kernel_size) & (dc >= 0) & (dc < kernel_size)
        dr, dc = dr.clamp(0, kernel_size - 1), dc.clamp(0, kernel_size - 1)
        bias = _gather_offsets(rows, dr) + _gather_offsets(cols, dc)  # (B, Hh, N, N)
        bias = bias.masked_fill(~inside, float("-inf"))
        qt, kt = qh.transpose(2, 3), k.reshape(B, Hh, Dh, N).transpose(2, 3)  # (B, Hh, N, Dh)
        vt = v.reshape(B, Hh, Dh, N).transpose(2, 3)
        out, probs = attend(qt, kt, vt, bias=bias, scale=1.0, capture=capture)  # (B, Hh, N, Dh)
        return out.transpose(2, 3).reshape(B, D, H, W), probs
    keys = F.unfold(k, kernel_size, padding=r).view(B, Hh, Dh, K, N)  # (B, Hh, Dh, K, N), zeros outside
    values = F.unfold(v, kernel_size, padding=r).view(B, Hh, Dh, K, N)  # window index: row·k + col
    logits = torch.einsum("bhdn,bhdkn->bhkn", qh, keys)  # (B, Hh, K, N): content
    logits = logits + (rows[:, :, :, None] + cols[:, :, None, :]).reshape(B, Hh, K, N)
    inside = F.unfold(q.new_ones(1, 1, H, W), kernel_size, padding=r)  # (1, K, N): 0 where the window leaves
    probs = logits.masked_fill(inside[:, None] == 0, float("-inf")).softmax(dim=2)  # (B, Hh, K, N)
    out = torch.einsum("bhkn,bhdkn->bhdn", probs, values).reshape(B, D, H, W)
    return out, dense_window_probs(probs, H, W, kernel_size) if capture else None


def _gather_offsets(per_offset: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """(B, Hh, k, N) logits per query and offset, (N, N) offset index of each (query, key) -> (B, Hh, N, N)."""
    B, Hh, _, N = per_offset.shape
    t = per_offset.transpose(2, 3)  # (B, Hh, N, k)
    return t.gather(3, offset[None, None].expand(B, Hh, N, N))


def dense_window_probs(probs: torch.Tensor, H: int, W: int, k: int) -> torch.Tensor:
    """Window probabilities (B, Hh, K, N) -> (B, Hh, N, N): row n holds query n's weights at its neighbours' places."""
    B, Hh, K, N = probs.shape
    where = torch.arange(1, N + 1, dtype=probs.dtype, device=probs.device).view(1, 1, H, W)  # 0 marks padding
    idx = F.unfold(where, k, padding=k // 2).round().long()[0].T  # (N, K): 1 + the key position, 0 outside
    dense = probs.new_zeros(B, Hh, N, N + 1)
    dense.scatter_(-1, idx.expand(B, Hh, N, K), probs.transpose(2, 3))  # (B, Hh, N, N + 1)
    return dense[..., 1:]
