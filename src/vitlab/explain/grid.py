"""Captured attention placed on the image: which tokens are prefix tokens, where every other token sits.

A layer's probabilities (B, H, Nq, Nk) say nothing about space; the pictures of `vitlab explain attention` and the
mean attention distance (ViT, arXiv 2010.11929, Fig. 7 right) need each query and key token's grid and its step in
input pixels. They are read from the forward itself, so one rule covers every family:

- ViT, DeiT, CPVT, hybrid: `num_prefix_tokens` (class, distillation) first, then the Hp x Wp patch grid;
- Swin: the window maps stitched onto the stage's (padded) grid (`swin_attention_maps`), no prefix tokens, the
  patch size doubled by each patch merging between tokens;
- CvT: the layer is called with its (H, W) query map; the keys/values lie on that map subsampled by the stride s for
  which ceil(H/s) * ceil(W/s) tokens remain, the class token (if any) first in both;
- any other layer with a capture flag: a square grid after the prefix tokens (the largest square that fits).

Token (r, c) of a grid with step `stride` is centred at (r * stride, c * stride) pixels from the first token's
centre; a subsampled key grid shares that origin (key r' sits on query 2r' for s = 2, as CvT's padded 3x3 conv).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from vitlab.explain.attention import (
    _layer_indices,
    attention_layers,
    attention_maps_and_inputs,
    attention_rollout,
)
from vitlab.explain.windows import swin_attention_maps


@dataclass
class GridAttention:
    """One layer's probabilities with the geometry of its tokens. Shapes: probs (B, H, Nq, Nk), prefix tokens first."""

    probs: torch.Tensor
    q_prefix: int  # class/distillation tokens before the query grid
    k_prefix: int  # ... before the key grid
    q_grid: tuple[int, int]  # (rows, cols) of the query tokens
    k_grid: tuple[int, int]
    q_stride: float  # input pixels between neighbouring query tokens
    k_stride: float

    @property
    def num_heads(self) -> int:
        return self.probs.shape[1]

    def query_map(self, query: int | str | None = None) -> torch.Tensor:
        """(B, H, kh, kw): the attention one query pays to each key of the grid.

        `query`: an index among the prefix tokens (0 = class token, 1 = DeiT's distillation token); "mean": the mean
        over the grid queries (how much attention each key receives); None: the class token where the layer has
        one, else "mean". Attention to prefix keys is left out (it has no place in the image), rows not renormalised.
        """
        if query is None:
            query = 0 if self.q_prefix else "mean"
        keys = self.probs[..., self.k_prefix :]  # (B, H, Nq, kh*kw)
        if query == "mean":
            row = keys[:, :, self.q_prefix :].mean(dim=2)
        elif isinstance(query, int) and 0 <= query < self.q_prefix:
            row = keys[:, :, query]
        else:
            raise ValueError(
                f"query {query!r}: this layer has {self.q_prefix} prefix token(s), so a query is an index in "
                f"[0, {self.q_prefix - 1}] or 'mean'"
                if self.q_prefix
                else f"query {query!r}: this layer has no class token, so the only query is 'mean' (or None)"
            )
        return row.reshape(*row.shape[:2], *self.k_grid)  # (B, H, kh, kw)

    def grid_probs(self) -> torch.Tensor:
        """(B, H, Nq', Nk'): grid queries to grid keys, each row renormalised over the grid keys."""
        p = self.probs[:, :, self.q_prefix :, self.k_prefix :]
        return p / p.sum(dim=-1, keepdim=True).clamp_min(1e-12)

    def centres(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(query centres (Nq', 2), key centres (Nk', 2)): (row, col) in input pixels, row-major, common origin."""
        return _centres(self.q_grid, self.q_stride), _centres(self.k_grid, self.k_stride)


def _centres(grid: tuple[int, int], stride: float) -> torch.Tensor:
    r, c = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    return torch.stack([r.flatten(), c.flatten()], dim=1).double() * stride  # (N, 2)


def _owner_blocks(model: nn.Module) -> dict[int, nn.Module]:
    return {id(m.attn): m for m in model.modules() if isinstance(getattr(m, "attn", None), nn.Module)}


def _is_windowed(model: nn.Module, layer: nn.Module) -> bool:
    blk = _owner_blocks(model).get(id(layer))
    return blk is not None and hasattr(blk, "window_size") and hasattr(blk, "shift_size")


@torch.no_grad()
def grid_attention(model: nn.Module, x: torch.Tensor, layers: Sequence[int] | None = None) -> dict[int, GridAttention]:
    """{layer index: GridAttention} of one eval-mode forward of `x` (layer indices as in `capture_attention`).

    ValueError for a model without attention layers and for a layer whose tokens cannot be placed on a grid.
    """
    attn = attention_layers(model)
    idx = _layer_indices(layers, len(attn))
    H_img, W_img = x.shape[-2:]
    if all(_is_windowed(model, attn[i]) for i in idx):
        return _swin(model, x, idx)
    maps, seen = attention_maps_and_inputs(model, x, idx, {i: attn[i] for i in idx})
    out = {}
    for i in idx:
        p = maps[i]
        if p.shape[0] != x.shape[0]:
            raise ValueError(
                f"attention layer {i} gives {p.shape[0]} maps for {x.shape[0]} images (windowed attention outside a "
                "Swin block): its tokens cannot be placed on the image"
            )
        Nq, Nk = p.shape[-2:]
        args = seen.get(i, ())
        hw = args[1] if len(args) > 1 and isinstance(args[1], tuple | list) and len(args[1]) == 2 else None
        if hw is not None:  # CvT: the layer is told its query map
            q_grid = (int(hw[0]), int(hw[1]))
            q_prefix = Nq - q_grid[0] * q_grid[1]
        else:
            q_prefix, q_grid = _patch_grid(model, Nq, (H_img, W_img))
        k_prefix, s = q_prefix, _subsampling(q_grid, Nk - q_prefix)
        if q_prefix < 0 or s is None:
            raise ValueError(
                f"attention layer {i}: cannot place {Nq} queries and {Nk} keys on a token grid of {q_grid}"
            )
        q_stride = H_img / q_grid[0]
        k_grid = (-(-q_grid[0] // s), -(-q_grid[1] // s))
        out[i] = GridAttention(p, q_prefix, k_prefix, q_grid, k_grid, q_stride, q_stride * s)
    return out


def _patch_grid(model: nn.Module, n: int, image: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    """(prefix tokens, grid) of n tokens: the model's patch grid where it says so, else the largest square."""
    prefix = getattr(model, "num_prefix_tokens", None)
    p = getattr(model, "patch_size", None)
    if isinstance(prefix, int) and isinstance(p, int) and n - prefix == (image[0] // p) * (image[1] // p):
        return prefix, (image[0] // p, image[1] // p)
    side = math.isqrt(n)
    return n - side * side, (side, side)


def _subsampling(q_grid: tuple[int, int], keys: int) -> int | None:
    """The stride s with ceil(h/s) * ceil(w/s) == keys (1: keys on the query grid); None when there is none."""
    h, w = q_grid
    for s in range(1, max(h, w) + 1):
        if -(-h // s) * -(-w // s) == keys:
            return s
    return None


def _swin(model: nn.Module, x: torch.Tensor, idx: list[int]) -> dict[int, GridAttention]:
    attn = attention_layers(model)
    owners = _owner_blocks(model)
    grids: dict[int, tuple[int, int]] = {}

    def recorder(i: int):
        def hook(module: nn.Module, args: tuple) -> None:
            grids[i] = (args[0].shape[1], args[0].shape[2])  # the block's input (B, H, W, C), before padding

        return hook

    hooks = [owners[id(attn[i])].register_forward_pre_hook(recorder(i)) for i in idx]
    try:
        maps = swin_attention_maps(model, x, idx)
    finally:
        for h in hooks:
            h.remove()
    # token step of each stage: the patch, doubled by every patch merging (its zero padding adds no step)
    patch = model.patch_embed.proj.stride[0]
    steps = {id(b.attn): patch * 2**k for k, stage in enumerate(model.layers) for b in stage.blocks}
    out = {}
    for i in idx:
        stride = float(steps[id(attn[i])])
        ws = owners[id(attn[i])].window_size
        grid = tuple(-(-n // ws) * ws for n in grids[i])  # the padded grid the stitched maps cover
        out[i] = GridAttention(maps[i], 0, 0, grid, grid, stride, stride)
    return out


@torch.no_grad()
def grid_rollout(model: nn.Module, x: torch.Tensor, discard_ratio: float = 0.0) -> GridAttention:
    """`attention_rollout` as a one-head GridAttention on the token grid every layer shares (ViT-like models only)."""
    rollout = attention_rollout(model, x, discard_ratio)  # (B, N, N)
    geometry = grid_attention(model, x, [0])[0]
    return GridAttention(
        rollout[:, None],
        geometry.q_prefix,
        geometry.k_prefix,
        geometry.q_grid,
        geometry.k_grid,
        geometry.q_stride,
        geometry.k_stride,
    )
