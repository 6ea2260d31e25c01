"""DETR (Carion et al., "End-to-End Object Detection with Transformers", arXiv 2005.12872).

A backbone (any registered model through `features_only`, its BatchNorm frozen) -> 1x1 projection to d_model ->
sine positions -> post-norm transformer encoder -> decoder over Q learned queries, starting from zeros ->
per decoder layer, a class head (num_classes + "no object", last) and a 3-layer box MLP + sigmoid (cx, cy, w, h).
Positions are added to queries and keys only, never to values (sec. 3.2, appendix A.3). Padded pixels
(`pixel_mask` False) are excluded from attention and from the normalisation of the positions.
Differs from the reference code in layout only: attention is one `F.scaled_dot_product_attention` with
separate q/k/v projections (as in HF's port), and the output is a named dataclass, not a dict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitlab.models.features import FeatureNet
from vitlab.registry import get_entry, register_model


@dataclass
class DetrConfig:
    backbone: str = "resnet50"  # any registered model with features_only; its last map feeds the transformer
    num_classes: int = 91  # COCO's ids run to 90 (+ background slot 0 in the reference); "no object" is added on top
    labels: tuple[str, ...] = ()  # class names, index order (recorded in checkpoints; `vitlab detect` prints them)
    d_model: int = 256  # transformer width (sec. 4, "d=256")
    num_heads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    ffn_dim: int = 2048
    dropout: float = 0.1  # reference default, in attention and FFN
    num_queries: int = 100  # upper bound on detections per image (sec. 4)
    pos_temperature: float = 10000.0  # sine encoding, as in "Attention is all you need"
    backbone_kwargs: dict = field(default_factory=dict)  # e.g. a ResNet's widths for a tiny CPU config
    # Which of the backbone's feature levels feeds the transformer: -1 the last (stride 32, the paper); the CPU
    # config takes -2 (stride 16), so small images still give a grid of several tokens per side.
    backbone_index: int = -1
    # Frozen BatchNorm suits a pretrained backbone (batches of a few images give poor statistics). A backbone
    # trained from scratch needs its BN: frozen at init, a zero-initialised residual gamma would stay zero forever.
    freeze_bn: bool = True

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads or self.d_model % 2:
            raise ValueError(f"d_model={self.d_model} must be even and divisible by num_heads={self.num_heads}")
        if self.num_classes < 1 or self.num_queries < 1:
            raise ValueError(f"num_classes and num_queries must be >= 1, got {self.num_classes}, {self.num_queries}")
        if self.labels and len(self.labels) != self.num_classes:
            raise ValueError(f"{len(self.labels)} labels for num_classes={self.num_classes}")
        self.labels = tuple(self.labels)


@dataclass
class DetrOutput:
    logits: torch.Tensor  # (B, Q, K+1) class logits of the last decoder layer; index K = "no object"
    pred_boxes: torch.Tensor  # (B, Q, 4) (cx, cy, w, h) in [0, 1] of the unpadded image
    aux: list[tuple[torch.Tensor, torch.Tensor]]  # (logits, boxes) of decoder layers 0..L-2, for the aux losses


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine (DETR freezes them: batches of 2 images give no useful stats)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps  # num_features read by feature_info, as on BatchNorm
        for name, init in (("weight", torch.ones), ("bias", torch.zeros)):
            self.register_buffer(name, init(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in `module` (in place) by a FrozenBatchNorm2d holding the same statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, child.eps)
            with torch.no_grad():
                frozen.weight.copy_(child.weight)
                frozen.bias.copy_(child.bias)
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batch_norm(child)
    return module


def sine_position_encoding(mask: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(B, H, W) bool, True on real pixels -> (B, dim, H, W): dim/2 channels for y, then dim/2 for x.

    Coordinates are cumulative counts of real pixels, normalised by the real extent and scaled to 2π (sec. A.4),
    so the padding changes no position of the image itself.
    """
    eps, scale, half = 1e-6, 2 * math.pi, dim // 2
    m = mask.to(torch.float32)
    y = m.cumsum(1)
    x = m.cumsum(2)
    y = y / (y[:, -1:, :] + eps) * scale  # (B, H, W)
    x = x / (x[:, :, -1:] + eps) * scale
    freqs = temperature ** (2 * (torch.arange(half, device=mask.device) // 2) / half)  # (half,)
    pos_y, pos_x = y[..., None] / freqs, x[..., None] / freqs  # (B, H, W, half)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)  # (B, dim, H, W)


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections; `key_pad` (B, N_k) True on keys to ignore."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_pad: torch.Tensor | None = None
    ) -> torch.Tensor:
        B, Nq, D = q.shape
        H = self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, -1, H, D // H).transpose(1, 2)  # (B, H, N, Dh)

        mask = None if key_pad is None else ~key_pad[:, None, None, :]  # (B, 1, 1, Nk), True = attend
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(
            heads(self.q_proj(q)), heads(self.k_proj(k)), heads(self.v_proj(v)), attn_mask=mask, dropout_p=p
        )
        return self.out_proj(out.transpose(1, 2).reshape(B, Nq, D))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1, self.fc2, self.drop = nn.Linear(dim, hidden), nn.Linear(hidden, dim), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(F.relu(self.fc1(x))))


class EncoderLayer(nn.Module):
    """Post-norm: x = LN(x + SA(x + pos, x + pos, x)); x = LN(x + FFN(x))."""

    def __init__(self, cfg: DetrConfig) -> None:
        super().__init__()
        D = cfg.d_model
        self.self_attn = Attention(D, cfg.num_heads, cfg.dropout)
        self.self_attn_norm = nn.LayerNorm(D)
        self.mlp = FeedForward(D, cfg.ffn_dim, cfg.dropout)
        self.final_norm = nn.LayerNorm(D)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, key_pad: torch.Tensor | None) -> torch.Tensor:
        qk = x + pos
        x = self.self_attn_norm(x + self.drop(self.self_attn(qk, qk, x, key_pad)))
        return self.final_norm(x + self.drop(self.mlp(x)))


class DecoderLayer(nn.Module):
    """Post-norm: self-attention over queries, cross-attention to the memory, FFN; positions on q and k only."""

    def __init__(self, cfg: DetrConfig) -> None:
        super().__init__()
        D = cfg.d_model
        self.self_attn = Attention(D, cfg.num_heads, cfg.dropout)
        self.self_attn_norm = nn.LayerNorm(D)
        self.cross_attn = Attention(D, cfg.num_heads, cfg.dropout)
        self.cross_attn_norm = nn.LayerNorm(D)
        self.mlp = FeedForward(D, cfg.ffn_dim, cfg.dropout)
        self.final_norm = nn.LayerNorm(D)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        tgt: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor,
        key_pad: torch.Tensor | None,
    ) -> torch.Tensor:
        qk = tgt + query_pos
        tgt = self.self_attn_norm(tgt + self.drop(self.self_attn(qk, qk, tgt)))
        tgt = self.cross_attn_norm(tgt + self.drop(self.cross_attn(tgt + query_pos, memory + pos, memory, key_pad)))
        return self.final_norm(tgt + self.drop(self.mlp(tgt)))


class BoxHead(nn.Module):
    """3-layer MLP with ReLU -> sigmoid: normalised (cx, cy, w, h)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, 4)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x.sigmoid()


class DETR(nn.Module):
    """Shapes: images (B, 3, H, W), pixel_mask (B, H, W) -> DetrOutput with Q queries of K+1 classes."""

    def __init__(self, cfg: DetrConfig, backbone: nn.Module) -> None:
        """`backbone`: `create_model(cfg.backbone, features_only=True, out_indices=(-1,))` (built by the caller,
        as models do not import the factory); its BatchNorms are frozen here."""
        super().__init__()
        self.cfg = cfg
        self.backbone = freeze_batch_norm(backbone) if cfg.freeze_bn else backbone
        D = cfg.d_model
        self.input_proj = nn.Conv2d(self.backbone.feature_info.channels()[-1], D, kernel_size=1)
        self.query_embed = nn.Embedding(cfg.num_queries, D)
        self.encoder = nn.ModuleList([EncoderLayer(cfg) for _ in range(cfg.enc_layers)])
        self.decoder = nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg.dec_layers)])
        self.decoder_norm = nn.LayerNorm(D)
        self.class_head = nn.Linear(D, cfg.num_classes + 1)
        self.box_head = BoxHead(D)
        # a patch model cuts whole patches: the batch is padded (and masked) up to a multiple of its patch size
        self.size_multiple = int(getattr(backbone.model, "patch_size", 1))

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    @property
    def pretrained_cfg(self) -> dict:
        """The backbone's input statistics (a pretrained backbone expects its own normalisation)."""
        return {**self.backbone.pretrained_cfg, "num_classes": self.cfg.num_classes}

    def get_classifier_names(self) -> list[str]:
        """The class head: a checkpoint with another class count loads with a new one (fine-tuning to new classes)."""
        return ["class_head"]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            raise ValueError("DETR has no gradient checkpointing; train without --grad-checkpointing")

    def lr_multipliers(self, backbone: float) -> dict[str, float]:
        """Parameter-name prefix -> learning-rate multiplier (DETR trains a pretrained backbone at lr / 10)."""
        return {"backbone.": backbone}

    def forward(self, images: torch.Tensor, pixel_mask: torch.Tensor | None = None) -> DetrOutput:
        B = images.shape[0]
        if pixel_mask is None:
            pixel_mask = torch.ones(B, *images.shape[2:], dtype=torch.bool, device=images.device)
        m = self.size_multiple
        pad_h, pad_w = -images.shape[-2] % m, -images.shape[-1] % m
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
            pixel_mask = F.pad(pixel_mask, (0, pad_w, 0, pad_h))  # False: padding
        fmap = self.backbone(images)[-1]  # (B, C, Hf, Wf)
        mask = F.interpolate(pixel_mask[None].float(), size=fmap.shape[-2:])[0].bool()  # (B, Hf, Wf), nearest
        pos = sine_position_encoding(mask, self.cfg.d_model, self.cfg.pos_temperature).to(fmap.dtype)
        memory = self.input_proj(fmap).flatten(2).transpose(1, 2)  # (B, N, D), N = Hf*Wf
        pos = pos.flatten(2).transpose(1, 2)  # (B, N, D)
        key_pad = ~mask.flatten(1)  # (B, N), True on padding
        for layer in self.encoder:
            memory = layer(memory, pos, key_pad)
        query_pos = self.query_embed.weight[None].expand(B, -1, -1)  # (B, Q, D)
        tgt = torch.zeros_like(query_pos)  # the decoder starts from zeros (sec. 3.2)
        outs = []
        for layer in self.decoder:
            tgt = layer(tgt, query_pos, memory, pos, key_pad)
            outs.append(self.decoder_norm(tgt))
        hs = torch.stack(outs)  # (L, B, Q, D)
        logits, boxes = self.class_head(hs), self.box_head(hs)
        aux = [(logits[i], boxes[i]) for i in range(len(outs) - 1)]
        return DetrOutput(logits=logits[-1], pred_boxes=boxes[-1], aux=aux)


def build_detr(cfg: DetrConfig) -> DETR:
    """DETR on `cfg.backbone` (any registered model with a feature pyramid), feature level `cfg.backbone_index`."""
    entry = get_entry(cfg.backbone)
    kwargs = dict(cfg.backbone_kwargs)
    if any(f.name == "dynamic_img_size" for f in fields(entry.config_cls)):
        kwargs.setdefault("dynamic_img_size", True)  # a ViT's position table follows each batch's size
    backbone = entry.factory(**kwargs)
    backbone.model_name = cfg.backbone
    return DETR(cfg, FeatureNet(backbone, out_indices=(cfg.backbone_index,), output_fmt="NCHW"))


# The paper's models and a CPU-sized one, registered as detectors (`create_model("detr_resnet50")`).
DETR_VARIANTS: dict[str, dict] = {
    "detr_resnet50": dict(backbone="resnet50"),  # 41.5M, AP 42.0 (Table 1)
    "detr_resnet50_dc5": dict(backbone="resnet50", backbone_kwargs=dict(output_stride=16)),  # 41.5M, AP 43.3
    "detr_resnet101": dict(backbone="resnet101"),  # 60M, AP 43.5
    "detr_tiny": dict(  # ~0.1 s per step of 16 small images on 2 CPU cores: the shapes set and tests
        backbone="resnet18",
        backbone_kwargs=dict(widths=(32, 64, 128, 256), stem_width=32),
        backbone_index=-2,
        d_model=64,
        num_heads=4,
        enc_layers=2,
        dec_layers=2,
        ffn_dim=128,
        num_queries=20,
        dropout=0.0,
    ),  # fmt: skip
}


def _register() -> None:
    for name, defaults in DETR_VARIANTS.items():

        def factory(_defaults=defaults, **overrides) -> DETR:
            return build_detr(DetrConfig(**{**_defaults, **overrides}))

        register_model(name, family="detr", config_cls=DetrConfig, kind="detector")(factory)


_register()
