"""Initialising a video transformer from an image ViT checkpoint (ViViT, arXiv 2103.15691, sec. 3.4; TimeSformer).

ViViT sec. 3.4: the position table of the image model is "repeated temporally" (model 1: every temporal index gets
the spatial rows; model 2's spatial encoder keeps them as they are); a 2-D patch filter E_image (D, C, p, p) becomes
a t x p x p tubelet filter by
- "average" (filter inflation, as I3D): E = [E_image, ..., E_image] / t, the same response to a static clip;
- "central" (central-frame initialisation): E = [0, ..., E_image, ..., 0], E_image at index floor(t / 2), so the
  model starts by looking at one frame of each tubelet (the paper's best for model 1, Table 1 discussion).
The transformer blocks, final norm and (when its size fits) the classifier are copied; model 2's temporal encoder
keeps its fresh initialisation, as in the paper.
TimeSformer (sec. 4, as its reference code does): the patch embedding and spatial attention are the image model's,
the temporal attention starts as a copy of the spatial one and the time table at zero; `temporal_fc` is set to zero in
every block (the reference keeps the first block's random, as at initialisation), so each block first computes
exactly the image ViT's function on every frame.

With these rules a static clip (the same frame T times) gives tubelet tokens equal to the image ViT's patch tokens of
that frame (either mode), and divided TimeSformer gives the image ViT's logits; tests/test_video_models.py checks both.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from vitlab.errors import CheckpointError
from vitlab.layers import resample_pos_embed

INFLATE_MODES = ("central", "average")


def is_image_vit_state(state: dict[str, torch.Tensor]) -> bool:
    """Whether a (vitlab/timm-named) state dict holds an image ViT: a 2-D patch filter, no temporal parameters."""
    w = state.get("patch_embed.proj.weight")
    temporal = any(k.startswith(("time_embed", "temporal_")) or ".temporal" in k for k in state)
    return w is not None and w.ndim == 4 and "pos_embed" in state and not temporal


def inflate_patch_filter(weight: torch.Tensor, t: int, mode: str = "central") -> torch.Tensor:
    """(D, C, p, p) image filter -> (D, C, t, p, p) tubelet filter by `mode` ("central" or "average")."""
    if mode not in INFLATE_MODES:
        raise ValueError(f"inflation mode must be one of {', '.join(INFLATE_MODES)}, got {mode!r}")
    if mode == "average":
        return weight[:, :, None].repeat(1, 1, t, 1, 1) / t
    out = weight.new_zeros(weight.shape[0], weight.shape[1], t, *weight.shape[2:])
    out[:, :, t // 2] = weight
    return out


def inflate_image_state(model: nn.Module, image: dict[str, torch.Tensor], mode: str = "central") -> dict:
    """The video model's full state dict, initialised from an image ViT's (vitlab/timm names) as described above.

    Parameters the image model has no counterpart for keep the model's own values; a classifier of another size is
    left as the model's (a new head for the video classes). Widths, depth and patch size must match.
    """
    if not is_image_vit_state(image):
        raise CheckpointError(
            "not an image ViT state dict (expected patch_embed.proj.weight (D, C, p, p) and pos_embed)"
        )
    if "cls_token" not in image:
        raise CheckpointError("the image ViT has no class token; video models read theirs (global_pool='token')")
    own = model.state_dict()
    out = dict(own)
    name = getattr(model, "model_name", type(model).__name__)
    w = image["patch_embed.proj.weight"]
    target = own["patch_embed.proj.weight"]
    if w.shape[0] != target.shape[0] or w.shape[1] != target.shape[1] or w.shape[-2:] != target.shape[-2:]:
        raise CheckpointError(
            f"the image ViT's patch embedding {tuple(w.shape)} does not fit {name}'s {tuple(target.shape)} "
            "(width D, channels and patch size must match)"
        )
    out["patch_embed.proj.weight"] = inflate_patch_filter(w, target.shape[2], mode) if target.ndim == 5 else w
    out["patch_embed.proj.bias"] = image["patch_embed.proj.bias"]
    out["cls_token"] = image["cls_token"]
    out["pos_embed"] = _position_table(image["pos_embed"], own["pos_embed"], model)

    depth_img = 1 + max((int(m[1]) for k in image if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    depth = len(model.blocks)
    if depth_img != depth:
        raise CheckpointError(f"the image ViT has {depth_img} blocks, {name} has {depth}")
    for k, v in image.items():
        if k.startswith("blocks.") or k.startswith("norm."):
            out[_copy(k, v, own, name)] = v
    for i, blk in enumerate(model.blocks):
        for dst, src in _temporal_sources(blk):
            for param in ("weight", "bias"):
                key = f"blocks.{i}.{src}.{param}"
                if key in image:
                    out[f"blocks.{i}.{dst}.{param}"] = image[key]
        if hasattr(blk, "temporal_fc"):  # the temporal branch starts switched off
            out[f"blocks.{i}.temporal_fc.weight"] = torch.zeros_like(own[f"blocks.{i}.temporal_fc.weight"])
            out[f"blocks.{i}.temporal_fc.bias"] = torch.zeros_like(own[f"blocks.{i}.temporal_fc.bias"])
    if "time_embed" in own:
        out["time_embed"] = torch.zeros_like(own["time_embed"])
    for k in ("head.weight", "head.bias"):
        if k in image and k in own and image[k].shape == own[k].shape:
            out[k] = image[k]
    return out


def _copy(key: str, value: torch.Tensor, own: dict, name: str) -> str:
    if key not in own:
        raise CheckpointError(f"the image ViT's {key} has no place in {name}")
    if own[key].shape != value.shape:
        raise CheckpointError(
            f"the image ViT's {key} {tuple(value.shape)} does not fit {name}'s {tuple(own[key].shape)}"
        )
    return key


def _temporal_sources(blk: nn.Module) -> list[tuple[str, str]]:
    """(video-only module, image module it starts from) in one block: TimeSformer's temporal and axial attentions."""
    pairs = []
    if hasattr(blk, "temporal_attn"):
        pairs += [("temporal_attn.qkv", "attn.qkv"), ("temporal_attn.proj", "attn.proj"), ("temporal_norm", "norm1")]
    for axis in ("temporal", "height"):
        if hasattr(blk, axis) and isinstance(getattr(blk, axis), nn.Module) and hasattr(getattr(blk, axis), "attn"):
            pairs += [(f"{axis}.attn.qkv", "attn.qkv"), (f"{axis}.attn.proj", "attn.proj"), (f"{axis}.norm", "norm1")]
    return pairs


def _position_table(image_pos: torch.Tensor, own_pos: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """The image table (1, 1 + P_img, D) resampled to the model's frame grid and, for ViViT model 1, repeated over
    the T' temporal indices (time-major, the tubelet tokens' order)."""
    grid = model.grid
    spatial = resample_pos_embed(image_pos, (grid, grid), 1)  # (1, 1 + Hp*Wp, D)
    repeats = (own_pos.shape[1] - 1) // (grid * grid)
    table = torch.cat([spatial[:, :1], spatial[:, 1:].repeat(1, repeats, 1)], dim=1)
    if table.shape != own_pos.shape:
        raise CheckpointError(f"the image ViT's position table {tuple(image_pos.shape)} cannot be inflated to "
                              f"{tuple(own_pos.shape)}")  # fmt: skip
    return table
