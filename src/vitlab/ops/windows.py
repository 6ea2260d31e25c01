"""Window helpers of the Swin Transformer (arXiv 2103.14030, sec. 3.2): partition, reverse, masks, bias index."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vitlab.fx import notrace


@notrace  # branches on the map size
def pad_to_windows(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) zero-padded at the bottom and right to multiples of ws (HF's rule); x itself when it fits."""
    pad_h, pad_w = -x.shape[1] % ws, -x.shape[2] % ws
    return F.pad(x, (0, 0, 0, pad_w, 0, pad_h)) if pad_h > 0 or pad_w > 0 else x  # F.pad copies even a no-op


@notrace
def crop_map(x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(B, Hp, Wp, C) -> (B, H, W, C): the padding `pad_to_windows` added cut off; x itself when there was none."""
    return x[:, :H, :W] if x.shape[1] != H or x.shape[2] != W else x


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/ws * W/ws, ws*ws, C), windows in row-major order."""
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5)  # (B, nH, nW, ws, ws, C)
    return x.reshape(-1, ws * ws, C)


def window_reverse(windows: torch.Tensor, ws: int, H: int, W: int) -> torch.Tensor:
    """Inverse of `window_partition`: (B * nW, ws*ws, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // ws, W // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5)  # (B, nH, ws, nW, ws, C)
    return x.reshape(-1, H, W, C)


def relative_position_index(ws: int) -> torch.Tensor:
    """(ws*ws, ws*ws) index into a (2ws-1)^2 table: row (dy + ws-1) * (2ws-1) + (dx + ws-1) for each token pair."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)  # (2, N)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)  # (N, N, 2), each in [0, 2ws-2]
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


@notrace  # the regions depend on the map size
def shifted_window_mask(
    H: int, W: int, ws: int, shift: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(nW, N, N) additive mask for a map rolled by -shift: -100 between tokens of different regions, else 0.

    The roll brings rows/columns from the far edge next to the near one; the three bands per axis
    [0, H-ws), [H-ws, H-shift), [H-shift, H) label the regions, and only same-label pairs may attend.
    """
    img = torch.zeros(1, H, W, 1, device=device)
    label = 0
    for h0, h1 in ((0, H - ws), (H - ws, H - shift), (H - shift, H)):
        for w0, w1 in ((0, W - ws), (W - ws, W - shift), (W - shift, W)):
            img[:, h0:h1, w0:w1] = label
            label += 1
    ids = window_partition(img, ws).squeeze(-1)  # (nW, N)
    diff = ids[:, None, :] != ids[:, :, None]  # (nW, N, N)
    return torch.zeros(diff.shape, device=device, dtype=dtype).masked_fill(diff, -100.0)
