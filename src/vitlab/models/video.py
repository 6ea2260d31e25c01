"""What the video transformers share: the clip config, input checks, a pre-LN block, and `VideoModelBase`.

Video models take clips (B, T, C, H, W) — frames first, the layout of transformers' `VivitForVideoClassification`
and `TimesformerForVideoClassification` (`pixel_values`) and of `vitlab.data.batches.ClipBatch` — and keep timm's
model API otherwise: `forward_features` -> tokens (B, N, D) (class token first), `forward_head`, `get_classifier`,
`reset_classifier`, `pretrained_cfg` (its `input_size` is (T, C, H, W), with `num_frames`), `no_weight_decay`,
`set_grad_checkpointing`, and `forward_intermediates` with the tokens of each block (output_fmt "NLC" only: a
space-time token set has no single 2-D grid). They are registered with kind "video" (`list_models(kind="video")`),
so the image-classifier contract (`model(images) -> logits`) does not apply; tests/test_video_models.py checks theirs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from vitlab.errors import shape_text
from vitlab.layers import Attention, DropPath, Mlp
from vitlab.models.base import ImageModelConfig, ModelBase, checkpointed, feature_take_indices, token_feature_info

ACTIVATIONS = {"gelu": nn.GELU, "gelu_tanh": partial(nn.GELU, approximate="tanh")}


@dataclass(frozen=True)
class VideoModelConfig(ImageModelConfig):
    num_frames: int = 8  # frames T per clip; the temporal position table has one row per frame (or tubelet)
    patch_size: int = 16  # spatial side of a patch / tubelet
    embed_dim: int = 768  # token width D
    depth: int = 12  # transformer blocks L
    num_heads: int = 12  # attention heads H
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * D
    qkv_bias: bool = True  # bias on the q, k, v projections (ViT, ViViT, TimeSformer)
    act: str = "gelu"  # MLP activation: "gelu" (exact) or "gelu_tanh" (HF ViViT's gelu_fast)
    norm_eps: float = 1e-6  # LayerNorm epsilon (both HF video configs: 1e-6)
    drop_rate: float = 0.0  # dropout after the embeddings and in the MLPs
    attn_drop_rate: float = 0.0  # dropout on attention probabilities
    drop_path_rate: float = 0.0  # stochastic depth, linearly increasing over blocks
    global_pool: str = "token"  # the head reads the class token (both papers); "avg": mean of the other tokens

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.num_frames, int) and self.num_frames >= 1):
            raise ValueError(f"num_frames must be a positive integer, got {self.num_frames!r}")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {', '.join(ACTIVATIONS)}, got {self.act!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} must be divisible by num_heads={self.num_heads}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size={self.img_size} is not a multiple of patch_size={self.patch_size}")

    def test_overrides(self) -> dict:
        return dict(depth=2, img_size=self.patch_size * 2, num_frames=4, drop_path_rate=0.0, drop_rate=0.0)


class Block(nn.Module):
    """Pre-LN transformer block x + Attn(LN(x)), x + MLP(LN(x)), over whatever token set it is given. (B, N, D)."""

    def __init__(self, cfg: VideoModelConfig, drop_path: float) -> None:
        super().__init__()
        D = cfg.embed_dim
        self.norm1 = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.attn = Attention(D, cfg.num_heads, cfg.qkv_bias, cfg.attn_drop_rate, cfg.drop_rate)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.mlp = make_mlp(cfg)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


def make_mlp(cfg: VideoModelConfig) -> Mlp:
    return Mlp(cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio), act_layer=ACTIVATIONS[cfg.act], drop=cfg.drop_rate)


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Stochastic-depth rate of each block, 0 at the first and `rate` at the last."""
    return [rate * i / max(depth - 1, 1) for i in range(depth)]


def check_clips(x, num_frames: int, in_chans: int, img_size: int) -> None:
    """One clear error for input a video model cannot take: not a float tensor, not (B, T, C, H, W) at its size."""
    want = f"(B, {num_frames}, {in_chans}, {img_size}, {img_size})"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected clips as a torch.Tensor {want}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"expected floating-point clips (normalised frames), got {x.dtype}")
    if x.ndim != 5 or tuple(x.shape[1:]) != (num_frames, in_chans, img_size, img_size):
        hint = ""
        if x.ndim == 5 and x.shape[1] == in_chans and x.shape[2] == num_frames:
            hint = "; the clips look like (B, C, T, H, W): pass x.transpose(1, 2)"
        elif x.ndim == 5 and x.shape[1] != num_frames:
            hint = f" (create the model with num_frames={x.shape[1]} for clips of that length)"
        raise ValueError(f"expected clips of shape {want}, got {shape_text(x)}{hint}")


class VideoModelBase(ModelBase):
    """timm's API on clips: a family implements `_forward_trunk(x, take, stop)` -> (tokens, [block outputs])."""

    global_pools = ("token", "avg")
    output_fmt = "NLC"
    first_conv = "patch_embed.proj"
    fixed_input_size = True  # position tables fix the frame count and size
    crop_pct = 0.875  # both HF video processors: shortest side 256 (ViViT) / 224 / 0.875, centre crop 224
    num_prefix_tokens = 1

    def __init__(self, cfg: VideoModelConfig) -> None:
        super().__init__(cfg, num_features=cfg.embed_dim)
        self.num_frames = cfg.num_frames
        self.img_size = cfg.img_size

    @property
    def pretrained_cfg(self) -> dict:
        out = dict(super().pretrained_cfg)
        cfg = self.cfg
        return {**out, "input_size": (cfg.num_frames, cfg.in_chans, cfg.img_size, cfg.img_size),
                "num_frames": cfg.num_frames}  # fmt: skip

    def _feature_info(self) -> list[dict]:
        return token_feature_info(self.cfg.depth, self.num_features, self.cfg.patch_size)

    def no_weight_decay(self) -> set[str]:
        return {n for n, p in self.named_parameters() if n.endswith(("cls_token", "pos_embed", "time_embed"))}

    def _run(self, blk: nn.Module, *args):
        return checkpointed(blk, *args) if self.grad_checkpointing else blk(*args)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_clips(x, self.num_frames, self.in_chans, self.img_size)
        return self._forward_trunk(x)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "":
            return x
        x = x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens :].mean(dim=1)
        return x if pre_logits else self.head(self.head_drop(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NLC",
        intermediates_only: bool = False,
    ):
        """Tokens (B, N, D) of the blocks named by `indices` (timm's rule), class token split off (returned beside
        each output with `return_prefix_tokens`); `norm` applies the final LayerNorm."""
        if output_fmt != "NLC":
            raise ValueError(f"video models give tokens: output_fmt must be 'NLC', got {output_fmt!r}")
        take, last = feature_take_indices(len(self.feature_info), indices)
        check_clips(x, self.num_frames, self.in_chans, self.img_size)
        final, outs = self._forward_trunk(x, take, last if stop_early and intermediates_only else None)
        feats = []
        for y in outs:
            y = self.norm(y) if norm else y
            P = self.num_prefix_tokens
            feats.append((y[:, P:], y[:, :P]) if return_prefix_tokens else y[:, P:])
        return feats if intermediates_only else (final, feats)
