"""AST: Audio Spectrogram Transformer — a DeiT on overlapping patches of a log-mel spectrogram.

Paper: "AST: Audio Spectrogram Transformer" (Gong, Chung, Glass; arXiv 2104.01778). Sec. 2.1: the 128 x T bank
(`vitlab.data.audio`) is cut into 16x16 patches with stride 10 on both axes (an overlap of 6), each linearly
projected; a class and a distillation token lead the sequence (the DeiT layout), a learned position table is added,
and the output of the two tokens, averaged, feeds a LayerNorm + linear head. Sec. 2.2: ImageNet weights transfer by
averaging the patch filters' three input channels into one and fitting the position table to the spectrogram's grid
(`adapt_vit_state`).

Differences from the reference code: the transformer is vitlab's ViT (`vitlab.models.vit`, timm's parameter names),
so only the patch embedding, the pooling and the head are this file's; the input is a one-channel image
(B, 1, F, T) with frequency as height and time as width, which is HF's `input_values` (B, T, F) transposed; the
position table of another grid is resized bilinearly where the paper cuts or interpolates (`fit_pos_grid`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.data.audio import AUDIOSET_MEAN, AUDIOSET_STD, SAMPLE_RATE
from vitlab.errors import shape_text
from vitlab.fx import notrace
from vitlab.models.base import token_feature_info
from vitlab.models.vit import VisionTransformer, ViTConfig
from vitlab.registry import register_variants


@dataclass(frozen=True)
class ASTConfig(ViTConfig):
    num_mel_bins: int = 128  # spectrogram height F (sec. 2.1: 128 mel bins)
    max_length: int = 1024  # spectrogram width T in 10 ms frames (AudioSet's 10 s clips: 1024)
    fstride: int = 10  # patch stride along frequency: 16x16 patches overlapping by 6 (sec. 2.1)
    tstride: int = 10  # patch stride along time
    audio_mean: float = AUDIOSET_MEAN  # statistics the bank is normalised with before the model, (x - m) / (2 s)
    audio_std: float = AUDIOSET_STD
    sample_rate: int = SAMPLE_RATE  # waveforms are resampled to this before the bank
    # img_size: the spectrogram height, always num_mel_bins (0: take it from there); the width is max_length
    img_size: int = 0
    in_chans: int = 1  # one spectrogram channel
    distilled: bool = True  # AST keeps DeiT's distillation token (its output is averaged with the class token's)
    norm_eps: float = 1e-12  # HF ASTConfig's layer_norm_eps
    mean: tuple[float, ...] = (0.0,)  # the bank arrives normalised (audio_mean / audio_std): nothing more to do
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if self.img_size == 0:
            object.__setattr__(self, "img_size", self.num_mel_bins)
        elif self.img_size != self.num_mel_bins:
            raise ValueError(
                f"AST's input is num_mel_bins x max_length ({self.num_mel_bins} x {self.max_length}); set "
                f"num_mel_bins instead of img_size={self.img_size}"
            )
        super().__post_init__()
        if (
            self.pos_embed != "learned"
            or not self.distilled
            or self.dynamic_img_size
            or self.global_pool not in ("token", "")
        ):
            raise ValueError("AST has a learned position table, class and distillation tokens, and pools the two")
        for name in ("num_mel_bins", "max_length"):
            if getattr(self, name) < self.patch_size:
                raise ValueError(f"{name}={getattr(self, name)} is smaller than one patch ({self.patch_size})")
        if not (self.fstride >= 1 and self.tstride >= 1):
            raise ValueError(f"fstride and tstride must be >= 1, got {self.fstride}, {self.tstride}")

    @property
    def grid(self) -> tuple[int, int]:
        """(Fp, Tp) patches along frequency and time: (128 - 16) // 10 + 1 = 12 by (1024 - 16) // 10 + 1 = 101."""
        p = self.patch_size
        return (self.num_mel_bins - p) // self.fstride + 1, (self.max_length - p) // self.tstride + 1

    def test_overrides(self) -> dict:
        p = self.patch_size  # a 3 x 4 patch grid
        return dict(depth=2, num_mel_bins=p + 2 * self.fstride, max_length=p + 3 * self.tstride, img_size=0,
                    drop_path_rate=0.0)  # fmt: skip


class OverlapPatchEmbed(nn.Module):
    """Spectrogram (B, C, F, T) -> (B, Fp*Tp, D): a patch x patch convolution with strides (fstride, tstride), the
    tokens frequency-major (row by row of the grid), as HF's ASTPatchEmbeddings."""

    def __init__(self, cfg: ASTConfig) -> None:
        super().__init__()
        self.size = (cfg.num_mel_bins, cfg.max_length)
        self.in_chans = cfg.in_chans
        self.grid_size = cfg.grid
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        p = cfg.patch_size
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=p, stride=(cfg.fstride, cfg.tstride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_spectrogram(x, self.in_chans, self.size)
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, Fp, Tp) -> (B, N, D)


@notrace
def check_spectrogram(x: torch.Tensor, in_chans: int, size: tuple[int, int]) -> None:
    if x.ndim != 4 or x.shape[1] != in_chans or (x.shape[-2], x.shape[-1]) != size:
        raise ValueError(
            f"expected spectrograms of shape (B, {in_chans}, {size[0]}, {size[1]}) (mel bins x frames), got "
            f"{shape_text(x)}; vitlab.data.audio.SpectrogramTransform.for_model(model) makes them from a waveform"
        )


def fit_pos_grid(table: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """A position table's grid rows (1, old_F * old_T, D) bilinearly resized to (1, new_F * new_T, D)."""
    if tuple(old) == tuple(new):
        return table
    D = table.shape[-1]
    grid = table.reshape(1, old[0], old[1], D).permute(0, 3, 1, 2)  # (1, D, Fp, Tp)
    grid = F.interpolate(grid.float(), size=new, mode="bilinear", align_corners=False).to(table.dtype)
    return grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], D)


class AudioSpectrogramTransformer(VisionTransformer):
    """AST. Shapes: spectrograms (B, 1, F, T) -> tokens (B, 2 + Fp*Tp, D) -> logits (B, num_classes)."""

    global_pools = ("token",)  # the mean of the class and distillation tokens
    first_conv = "patch_embed.proj"

    def __init__(self, cfg: ASTConfig) -> None:
        super().__init__(cfg)
        self.head_dist = None  # one head, on the averaged tokens (ViT builds a second for distilled models)
        self.head_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)  # HF's classifier.layernorm, before the head
        self.grid = cfg.grid

    def make_patch_embed(self, cfg: ASTConfig) -> nn.Module:
        return OverlapPatchEmbed(cfg)

    def _tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        return self._pos_embed(self.patch_embed(images), self.grid), self.grid

    def _feature_info(self) -> list[dict]:
        return token_feature_info(len(self.blocks), self.num_features, self.cfg.tstride)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "":
            return x
        feats = self.head_drop(self.head_norm((x[:, 0] + x[:, 1]) / 2))  # (B, D): class and distillation tokens
        return feats if pre_logits else self.head(feats)

    def forward_distill(self, x: torch.Tensor):
        raise ValueError("AST has one head on the averaged class and distillation tokens; it is not trained with a "
                         "teacher's second head")  # fmt: skip

    @property
    def pretrained_cfg(self) -> dict:
        cfg = dict(super().pretrained_cfg)
        cfg.update(input_size=(self.cfg.in_chans, self.cfg.num_mel_bins, self.cfg.max_length), crop_pct=1.0)
        return cfg

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """An AST position table saved for another max_length (the same mel bins: Speech Commands' 128 frames from
        AudioSet's 1024) resized to this model's grid."""
        pe, own = state.get("pos_embed"), self.pos_embed
        if pe is None or pe.shape == own.shape or pe.shape[-1] != own.shape[-1]:
            return state
        Fp, n = self.grid[0], pe.shape[1] - self.num_prefix_tokens
        if n % Fp:
            return state  # not this frequency grid: the loader reports the shape mismatch
        table = fit_pos_grid(pe[:, self.num_prefix_tokens :], (Fp, n // Fp), self.grid)
        return dict(state, pos_embed=torch.cat([pe[:, : self.num_prefix_tokens], table], dim=1))


# ----- ImageNet ViT / DeiT weights -> AST (sec. 2.2) ---------------------------------------------------------------
def adapt_vit_state(state: dict[str, torch.Tensor], model: AudioSpectrogramTransformer) -> dict[str, torch.Tensor]:
    """A ViT or DeiT state dict (vitlab / timm names, any square grid) -> the weights of `model`, its head aside.

    - patch filters (D, 3, p, p): averaged over the input channels into (D, 1, p, p) (sec. 2.2). So a spectrogram
      seen as a three-channel grey image gives the ViT's patch tokens divided by 3, before the bias.
      (The authors' code sums the channels instead; the average keeps the token scale of one image channel.)
    - position table: the class row kept, the distillation row taken from DeiT or, for a plain ViT, a copy of the
      class row; the square grid resized bilinearly to the spectrogram's (Fp, Tp).
    - distillation token: DeiT's, or the class token for a plain ViT. Blocks and the final norm: as they are.
    - head, head_dist (ImageNet's classes) dropped; head_norm starts as identity (weight 1, bias 0).
    The result loads with `model.load_state_dict(..., strict=False)`: only `head.*` is missing.
    """
    out = {k: v for k, v in state.items() if not k.startswith(("head.", "head_dist.", "fc_norm."))}
    w = out["patch_embed.proj.weight"]
    if w.shape[1] != model.cfg.in_chans:
        out["patch_embed.proj.weight"] = w.mean(dim=1, keepdim=True).expand(-1, model.cfg.in_chans, -1, -1).clone()
    pe = out["pos_embed"]
    has_dist = "dist_token" in out
    prefix = 2 if has_dist else 1
    n = pe.shape[1] - prefix
    side = int(round(n**0.5))
    if side * side != n:
        raise ValueError(f"pos_embed has {n} grid rows after {prefix} prefix rows: not a square ViT grid")
    rows = pe[:, :prefix] if has_dist else pe[:, :1].repeat(1, 2, 1)
    out["pos_embed"] = torch.cat([rows, fit_pos_grid(pe[:, prefix:], (side, side), model.grid)], dim=1)
    if not has_dist:
        out["dist_token"] = out["cls_token"].clone()
    D = model.cfg.embed_dim
    out["head_norm.weight"], out["head_norm.bias"] = torch.ones(D), torch.zeros(D)
    return out


def init_from_vit(model: AudioSpectrogramTransformer, state: dict[str, torch.Tensor]) -> None:
    """Load ImageNet ViT / DeiT weights (`adapt_vit_state`) into `model`; its head stays as it is."""
    missing, unexpected = model.load_state_dict(adapt_vit_state(state, model), strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise ValueError(f"the ViT weights do not fit {getattr(model, 'model_name', 'the AST')}: missing "
                         f"{missing[:6]}, unexpected {unexpected[:6]}")  # fmt: skip


# ----- registered variants -------------------------------------------------------------------------------------------
_BASE = dict(embed_dim=768, depth=12, num_heads=12, patch_size=16, fstride=10, tstride=10, num_mel_bins=128)
AST_VARIANTS: dict[str, dict] = {
    # MIT/ast-finetuned-audioset-10-10-0.4593: 10.24 s clips, 527 AudioSet classes (86,594,063 parameters, as HF's)
    "ast_base_patch16_stride10_audioset": dict(**_BASE, max_length=1024, num_classes=527),
    # MIT/ast-finetuned-speech-commands-v2: 1.28 s, 35 keywords
    "ast_base_patch16_stride10_speechcommands": dict(**_BASE, max_length=128, num_classes=35),
    # CPU-sized, for the generated sound classes (vitlab.data.sounds): 64 mel bins x 2 s, 5 x 19 patches
    "ast_micro_patch16_stride10_64x200": dict(
        embed_dim=96, depth=4, num_heads=4, mlp_ratio=2.0, patch_size=16, fstride=10, tstride=10, num_mel_bins=64,
        max_length=200, num_classes=8,
    ),
}  # fmt: skip

register_variants(AST_VARIANTS, family="ast", config_cls=ASTConfig, model_cls=AudioSpectrogramTransformer, kind="audio")
