"""LSeg-style language-driven segmentation: CLIP's towers plus a dense head that embeds every pixel in the text space.

Li et al., "Language-driven Semantic Segmentation", ICLR 2022 (arXiv 2201.03546): an image encoder gives a C-dim
embedding per pixel, a text encoder (CLIP's, frozen in training) embeds each of the N labels typed at test time, and
the per-pixel logits are their scaled dot products, (B, N, H, W): any label set segments, including words never
trained as labels. LSeg's image encoder is a DPT decoder over a ViT (tokens reassembled from four layers); here the
dense head is lighter, sized for CPU training: the ViT's last-layer patch tokens -> LN -> a linear map to the
embedding width -> bilinear upsampling to half the input size, plus a stride-2 3x3 convolution of the input pixels
(edges the coarse token grid cannot place), then a 3x3 "spatial regularisation" convolution; unit norm per pixel;
the logits are upsampled bilinearly to the input size, as LSeg's.

`LSegModel` is a `ClipModel` (same weights names, so a CLIP run loads into it with `--pretrained`, the dense head
then being new) with `encode_pixels` and `segment`. Registered with kind "segmenter".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.models.clip import CLIP_VARIANTS, ClipConfig, ClipModel
from vitlab.registry import register_variants

__all__ = ["LSEG_VARIANTS", "LSegConfig", "LSegModel"]


@dataclass(frozen=True)
class LSegConfig(ClipConfig):
    """CLIP's config; the dense head's width is the shared embedding width (embed_dim)."""

    head_hidden: int = 0  # 0: the refinement convolutions keep embed_dim channels


class DenseHead(nn.Module):
    """Patch tokens (B, Hp*Wp, Dv) and the input images (B, C, H, W) -> embeddings (B, E, H/2, W/2), unit norm."""

    def __init__(self, cfg: LSegConfig) -> None:
        super().__init__()
        E, hidden = cfg.embed_dim, cfg.head_hidden or cfg.embed_dim
        self.norm = nn.LayerNorm(cfg.vision_width, eps=cfg.norm_eps)
        self.proj = nn.Linear(cfg.vision_width, hidden)
        self.stem = nn.Conv2d(cfg.in_chans, hidden, 3, stride=2, padding=1)  # half resolution, as LSeg's output
        self.refine = nn.Sequential(nn.GELU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.GELU())
        self.out = nn.Conv2d(hidden, E, 1)

    def forward(self, tokens: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        B, N, _ = tokens.shape
        H, W = images.shape[-2:]
        g = int(round(N**0.5))
        x = self.proj(self.norm(tokens)).transpose(1, 2).reshape(B, -1, g, g)  # (B, hidden, Hp, Wp)
        stem = self.stem(images)  # (B, hidden, H/2, W/2)
        x = F.interpolate(x, size=stem.shape[-2:], mode="bilinear", align_corners=False) + stem
        return F.normalize(self.out(self.refine(x)), dim=1)  # (B, E, H/2, W/2)


class LSegModel(ClipModel):
    """Shapes: images (B, C, H, W), label ids (N, T) -> `segment`: logits (B, N, H, W)."""

    def __init__(self, cfg: LSegConfig) -> None:
        super().__init__(cfg)
        self.dense = DenseHead(cfg)

    def get_classifier_names(self) -> list[str]:
        """The dense head, new when a CLIP checkpoint is loaded (the factory initialises it and says so)."""
        return ["dense"]

    def encode_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, E, H/2, W/2) unit-norm pixel embeddings in the text space (LSeg's output stride)."""
        tokens = self.visual.forward_features(images)[:, 1:]  # patch tokens, class token dropped
        return self.dense(tokens, images)

    def segment(self, images: torch.Tensor, label_ids: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits over the labels: exp(t) * <pixel embedding, label embedding>, bilinearly upsampled from
        half resolution to the input's, (B, N, H, W)."""
        text = self.encode_text(label_ids)  # (N, E) unit norm
        logits = self.scale() * torch.einsum("behw,ne->bnhw", self.encode_pixels(images), text)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


LSEG_VARIANTS = {"lseg_vit_tiny_patch8_32": CLIP_VARIANTS["clip_vit_tiny_patch8_32"]}
register_variants(LSEG_VARIANTS, family="lseg", config_cls=LSegConfig, model_cls=LSegModel, kind="segmenter")
