"""Swin window attention stitched back onto the stage's token grid.

"Swin Transformer: Hierarchical Vision Transformer using Shifted Windows" (Liu et al., arXiv 2103.14030, sec. 3.2):
each block attends inside non-overlapping ws x ws windows; every second block first rolls the map by -ws//2 (cyclic
shift) and masks pairs that the roll brought together from opposite edges. A captured layer holds one (ws², ws²)
matrix per window, in the rolled order. Here they are scattered into one (N, N) matrix per image and head over the
N = Hp*Wp tokens of the stage in image order (row-major, roll undone): zero outside each token's window, rows summing
to 1. Hp x Wp is the map zero-padded up to a multiple of the window, as the model pads it (equal to the map when it
is a multiple; the padded tokens take part in attention, so they are kept and the rows stay distributions).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vitlab.explain.attention import _layer_indices, attention_layers, attention_maps_and_inputs
from vitlab.ops.windows import window_partition


def stitch_window_attention(
    probs: torch.Tensor, grid: tuple[int, int], window_size: int, shift_size: int = 0
) -> torch.Tensor:
    """Per-window probabilities (B*nW, H, ws², ws²) -> (B, H, N, N) over the N = Hp*Wp tokens of the grid.

    `grid` = (Hp, Wp), the padded map the windows tile; `shift_size` the block's cyclic shift (0 for unshifted
    blocks). Entry [b, h, i, j] is how much token i (row-major on the grid, image coordinates) attends to token j.
    """
    Hp, Wp = grid
    ws, s = window_size, shift_size
    if Hp % ws or Wp % ws:
        raise ValueError(f"grid {grid} is not a multiple of window_size={ws}: pass the padded grid the windows tile")
    nW, N = (Hp // ws) * (Wp // ws), ws * ws
    if probs.ndim != 4 or probs.shape[-2:] != (N, N) or probs.shape[0] % nW:
        raise ValueError(
            f"expected window probabilities of shape (B*{nW}, H, {N}, {N}) for grid {grid} and window {ws}, "
            f"got {tuple(probs.shape)}"
        )
    B, H = probs.shape[0] // nW, probs.shape[1]
    token = torch.arange(Hp * Wp, device=probs.device).view(1, Hp, Wp, 1)  # image-order index of every token
    if s:
        token = torch.roll(token, shifts=(-s, -s), dims=(1, 2))  # as the block rolls: slot (r, c) holds (r+s, c+s)
    slot = window_partition(token, ws).view(nW, N)  # (nW, N): token index of each window slot
    p = probs.reshape(B, nW, H, N, N).transpose(1, 2)  # (B, H, nW, N, N)
    out = probs.new_zeros(B, H, Hp * Wp, Hp * Wp)  # (B, H, N, N) over the whole grid
    out[:, :, slot[:, :, None], slot[:, None, :]] = p  # every token sits in exactly one slot: no pair is written twice
    return out


@torch.no_grad()
def swin_attention_maps(
    model: nn.Module, x: torch.Tensor, layers: Sequence[int] | None = None
) -> dict[int, torch.Tensor]:
    """{layer index: (B, H, N, N)} window attention of a Swin model stitched onto each stage's Hp x Wp token grid.

    One eval-mode forward of `x` (the model's mode is restored); layer indices count across all stages as in
    `capture_attention`. Row i of a map, viewed as (Hp, Wp), is where token i looks: its (shifted) window.
    """
    attn = attention_layers(model)
    idx = _layer_indices(layers, len(attn))
    owners = {id(m.attn): m for m in model.modules() if isinstance(getattr(m, "attn", None), nn.Module)}
    blocks = {}
    for i in idx:
        blk = owners.get(id(attn[i]))
        if blk is None or not hasattr(blk, "window_size") or not hasattr(blk, "shift_size"):
            raise ValueError(
                f"attention layer {i} ({type(attn[i]).__name__}) is not in a Swin block with window_size and "
                "shift_size; use vitlab.explain.attention_maps for models without windowed attention"
            )
        blocks[i] = blk
    maps, inputs = attention_maps_and_inputs(model, x, idx, blocks)
    grids = {i: (a[0].shape[1], a[0].shape[2]) for i, a in inputs.items()}  # each block's input (B, H, W, C)
    out = {}
    for i, blk in blocks.items():
        ws = blk.window_size
        Hp, Wp = (-(-n // ws) * ws for n in grids[i])  # padded up to the window, as SwinBlock pads
        out[i] = stitch_window_attention(maps[i], (Hp, Wp), ws, blk.shift_size)
    return out
