"""CLIP: a ViT image tower and a causal text transformer, each projected into one embedding space.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", arXiv 2103.00020.
Sec. 2.4: the image tower is a ViT with an extra LayerNorm before the encoder; its class token's output is
layer-normed and linearly projected (no bias). The text tower embeds tokens + learned positions, runs a causally
masked transformer, layer-norms, takes the features at the end-of-text token and projects them (no bias).
Figure 3 / sec. 2.5: logits are cosine similarities scaled by exp(t), t learned, initialised to log(1/0.07),
exp(t) clamped at 100.

Differs from the reference code (openai/CLIP `model.py`, HF `modeling_clip.py`) in layout only: q/k/v are one fused
projection (as OpenAI's `in_proj_weight` and vitlab's ViT), attention goes through vitlab's `attend` (SDPA), and the
clamp is applied to exp(t) in the forward (the reference clamps t in place after each optimiser step; the value
used is the same, but here no training loop has to remember it). The model computes no loss
(`vitlab.losses.contrastive` does).

Registered with kind "clip" (`create_model("clip_vit_base_patch32_224")`, `vitlab models 'clip_*'`): the registry's
classifier contract (`model(images) -> logits`) does not apply. `create_clip(name)` builds one without the registry.
A transformers `CLIPModel` directory, or a state dict in HF's or openai/open_clip's names, loads with
`load_checkpoint` / `create_model(name, pretrained=PATH)` (the converter is `vitlab.weights.clip.HF`).
SigLIP (`logit_bias_init` set) adds the learned bias its pairwise sigmoid loss needs (`vitlab.losses.contrastive`).
`text_tower="bert"` replaces the text tower by a mean-pooled BERT encoder (`vitlab.models.bert_text`) of the text_*
sizes, for LiT with a pretrained sentence encoder such as all-MiniLM-L6-v2 (`vitlab train --task clip --text-tower`).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from vitlab.errors import UnknownModelError
from vitlab.layers import MaskedAttention, Mlp
from vitlab.layers.patch_embed import check_patch_input
from vitlab.models.bert_text import BertConfig, BertTextTower
from vitlab.models.outputs import ClipOutput
from vitlab.registry import register_variants

__all__ = ["CLIP_VARIANTS", "ClipConfig", "ClipModel", "QuickGELU", "create_clip"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the image normalisation CLIP's weights were trained with
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
TEXT_TOWERS = ("clip", "bert")


@dataclass(frozen=True)
class ClipConfig:
    """Both towers' sizes; the defaults are ViT-B/32 (151.3M parameters). Frozen: change with `dataclasses.replace`."""

    embed_dim: int = 512  # width of the shared image-text space both projections map to
    # image tower: a ViT
    img_size: int = 224  # square input side; the position table has (img_size / patch_size)^2 + 1 rows
    patch_size: int = 32  # kernel = stride of the patch-embedding conv
    in_chans: int = 3  # RGB
    vision_width: int = 768  # ViT token width Dv (B/32 and B/16: ViT-Base's 768)
    vision_depth: int = 12  # ViT blocks
    vision_heads: int = 12  # ViT heads; head dim 64 as in ViT
    # text tower: a causal transformer over BPE ids, or a BERT (LiT with a pretrained sentence encoder)
    text_tower: str = "clip"  # "clip": causal, pooled at end-of-text; "bert": bidirectional, post-LN, mean-pooled
    context_length: int = 77  # the text position table's rows; the tokenizer pads/truncates to this
    vocab_size: int = 49408  # CLIP's BPE vocabulary; end-of-text (49407) must be the largest id (pooling, below)
    text_width: int = 512  # text token width Dt (sec. 2.4: a 63M-parameter 12-layer 512-wide model, 8 heads)
    text_depth: int = 12  # text blocks
    text_heads: int = 8  # text heads
    mlp_ratio: float = 4.0  # MLP hidden = mlp_ratio * width in both towers
    text_mlp_dim: int | None = None  # a BERT text tower's MLP hidden width, as its checkpoint has it; None: the ratio
    quick_gelu: bool = True  # x * sigmoid(1.702 x): what the OpenAI weights were trained with; False: exact GELU
    norm_eps: float = 1e-5  # LayerNorm epsilon of PyTorch, OpenAI and HF CLIP
    logit_scale_init: float = math.log(1 / 0.07)  # t at the start: temperature 0.07 (sec. 2.5)
    logit_scale_max: float = 100.0  # exp(t) clamped here, "to prevent scaling the logits by more than 100"
    logit_bias_init: float | None = None  # SigLIP's learned logit bias b (the paper: -10); None: no bias (CLIP)
    mean: tuple[float, ...] = OPENAI_MEAN  # per-channel input normalisation (pretrained_cfg, for the transforms)
    std: tuple[float, ...] = OPENAI_STD

    def __post_init__(self) -> None:
        for name in ("mean", "std"):  # JSON round trips give lists: keep the config hashable
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size={self.img_size} must be a multiple of patch_size={self.patch_size}")
        towers = {"vision": (self.vision_width, self.vision_heads), "text": (self.text_width, self.text_heads)}
        for tower, (width, heads) in towers.items():
            if width % heads:
                raise ValueError(f"{tower}_width={width} must be divisible by {tower}_heads={heads}")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(f"mean and std need in_chans={self.in_chans} values, got {self.mean} and {self.std}")
        if self.text_tower not in TEXT_TOWERS:
            raise ValueError(f"text_tower must be one of {', '.join(TEXT_TOWERS)}, got {self.text_tower!r}")
        if self.text_mlp_dim is not None and self.text_tower != "bert":
            raise ValueError("text_mlp_dim sizes a BERT text tower (text_tower='bert'); CLIP's uses mlp_ratio")
        if self.logit_scale_max <= 0:
            raise ValueError(f"logit_scale_max must be positive, got {self.logit_scale_max}")


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), the GELU approximation of the original CLIP code (openai/CLIP `model.py`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualBlock(nn.Module):
    """Pre-LN transformer block, x + attn(LN(x)) then x + mlp(LN(x)), for both towers. (B, N, D) -> (B, N, D)."""

    def __init__(self, dim: int, num_heads: int, cfg: ClipConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = MaskedAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), act_layer=QuickGELU if cfg.quick_gelu else nn.GELU)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


def _run_blocks(blocks: nn.ModuleList, x: torch.Tensor, mask: torch.Tensor | None, checkpoint: bool) -> torch.Tensor:
    for blk in blocks:
        if checkpoint and x.requires_grad:
            x = torch.utils.checkpoint.checkpoint(blk, x, mask, use_reentrant=False)
        else:
            x = blk(x, mask)
    return x


def _init_blocks(blocks: nn.ModuleList, width: int) -> None:
    """openai/CLIP `initialize_parameters`: attention std width^-0.5, MLP-in (2 width)^-0.5, and the residual
    outputs (attention and MLP projections) width^-0.5 (2 depth)^-0.5, so the residual stream's variance stays put."""
    attn_std, fc_std = width**-0.5, (2 * width) ** -0.5
    proj_std = width**-0.5 * (2 * len(blocks)) ** -0.5
    for blk in blocks:
        nn.init.normal_(blk.attn.qkv.weight, std=attn_std)
        nn.init.normal_(blk.attn.proj.weight, std=proj_std)
        nn.init.normal_(blk.mlp.fc1.weight, std=fc_std)
        nn.init.normal_(blk.mlp.fc2.weight, std=proj_std)
        for lin in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2):
            nn.init.zeros_(lin.bias)


class VisionTower(nn.Module):
    """Patches -> [cls, patches] + positions -> LN -> blocks -> LN(cls) -> projection.

    Shapes: images (B, C, H, W) -> tokens (B, N, Dv), N = Hp*Wp + 1 -> embedding (B, E).
    """

    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        D = cfg.vision_width
        self.in_chans, self.patch_size, self.img_size = cfg.in_chans, cfg.patch_size, cfg.img_size
        # no bias: the extra LayerNorm right after makes one redundant (openai/CLIP `conv1`)
        self.patch_embed = nn.Conv2d(cfg.in_chans, D, cfg.patch_size, stride=cfg.patch_size, bias=False)
        num_patches = (cfg.img_size // cfg.patch_size) ** 2
        self.cls_token = nn.Parameter(torch.randn(D) * D**-0.5)  # openai/CLIP's init scale
        self.pos_embed = nn.Parameter(torch.randn(num_patches + 1, D) * D**-0.5)
        self.norm_pre = nn.LayerNorm(D, eps=cfg.norm_eps)  # the extra LN before the encoder (sec. 2.4)
        self.blocks = nn.ModuleList(ResidualBlock(D, cfg.vision_heads, cfg) for _ in range(cfg.vision_depth))
        self.norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.proj = nn.Linear(D, cfg.embed_dim, bias=False)
        self.grad_checkpointing = False
        _init_blocks(self.blocks, D)
        nn.init.normal_(self.proj.weight, std=D**-0.5)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        check_patch_input(images, self.in_chans, self.patch_size, self.img_size)
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, Hp*Wp, D)
        cls = self.cls_token.expand(x.shape[0], 1, -1)  # (B, 1, D)
        x = self.norm_pre(torch.cat([cls, x], dim=1) + self.pos_embed)  # (B, N, D)
        return _run_blocks(self.blocks, x, None, self.grad_checkpointing)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(self.forward_features(images)[:, 0]))  # (B, E)


class TextTower(nn.Module):
    """Ids -> token + position embeddings -> causal blocks -> LN -> features at end-of-text -> projection.

    Shapes: input_ids (B, T), T <= context_length -> tokens (B, T, Dt) -> embedding (B, E).
    """

    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        D = cfg.text_width
        self.context_length = cfg.context_length
        self.token_embed = nn.Embedding(cfg.vocab_size, D)
        self.pos_embed = nn.Parameter(torch.empty(cfg.context_length, D))
        self.blocks = nn.ModuleList(ResidualBlock(D, cfg.text_heads, cfg) for _ in range(cfg.text_depth))
        self.norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.proj = nn.Linear(D, cfg.embed_dim, bias=False)
        self.grad_checkpointing = False
        nn.init.normal_(self.token_embed.weight, std=0.02)  # openai/CLIP's init
        nn.init.normal_(self.pos_embed, std=0.01)
        _init_blocks(self.blocks, D)
        nn.init.normal_(self.proj.weight, std=D**-0.5)

    def forward_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.ndim != 2 or input_ids.shape[1] > self.context_length:
            raise ValueError(
                f"expected input_ids of shape (B, T) with T <= context_length={self.context_length}, got "
                f"{tuple(input_ids.shape)} (tokenize with ClipTokenizer, which truncates to the context)"
            )
        T = input_ids.shape[1]
        x = self.token_embed(input_ids) + self.pos_embed[:T]  # (B, T, D)
        # additive causal mask: token i attends to tokens j <= i only
        mask = torch.full((T, T), float("-inf"), device=x.device, dtype=x.dtype).triu(1)  # (T, T)
        return self.norm(_run_blocks(self.blocks, x, mask, self.grad_checkpointing))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(input_ids)  # (B, T, D)
        # The end-of-text token has the largest id of CLIP's vocabulary, so argmax finds it (first occurrence, so
        # EOT padding works too), as openai/CLIP and open_clip do. Zero padding after it is never attended to.
        eot = input_ids.argmax(dim=-1)  # (B,)
        return self.proj(x[torch.arange(x.shape[0], device=x.device), eot])  # (B, E)


class ClipModel(nn.Module):
    """Shapes: images (B, C, H, W), input_ids (B', T) -> ClipOutput: (B, E), (B', E), (B, B'), (B', B)."""

    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.visual = VisionTower(cfg)
        self.text = TextTower(cfg) if cfg.text_tower == "clip" else BertTextTower(bert_config(cfg), cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)))  # t; the scale is exp(t)
        if cfg.logit_bias_init is not None:  # SigLIP's b, added to every pair's logit
            self.logit_bias = nn.Parameter(torch.tensor(float(cfg.logit_bias_init)))

    @property
    def pretrained_cfg(self) -> dict:
        c = self.cfg
        return dict(input_size=(c.in_chans, c.img_size, c.img_size), mean=c.mean, std=c.std, interpolation="bicubic")

    @property
    def towers(self) -> dict[str, nn.Module]:
        """The two towers by the names `--lock` takes (LiT locks one and trains the other). A BERT text tower's is
        its pretrained encoder: the new projection after it trains even when the encoder is locked."""
        return {"image": self.visual, "text": self.text if self.cfg.text_tower == "clip" else self.text.encoder}

    def no_weight_decay(self) -> set[str]:
        # open_clip's rule: no decay on gains, biases, embeddings and the temperature (the bias is 0-d: no decay)
        text = (
            {"text.pos_embed"}
            if self.cfg.text_tower == "clip"
            else {"text.encoder.pos_embed", "text.encoder.type_embed"}
        )
        return {"logit_scale", "visual.cls_token", "visual.pos_embed", *text}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each tower's block activations in backward: less memory for more compute."""
        self.visual.grad_checkpointing = self.text.grad_checkpointing = enable

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, C, H, W) -> (B, E), unit-norm unless `normalize=False`."""
        z = self.visual(images)
        return F.normalize(z, dim=-1) if normalize else z

    def encode_text(self, input_ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, T) ids (ClipTokenizer's; a BERT tower's: WordPieceTokenizer's) -> (B, E), unit-norm unless
        `normalize=False`."""
        z = self.text(input_ids)
        return F.normalize(z, dim=-1) if normalize else z

    def scale(self) -> torch.Tensor:
        """exp(t) clamped at `logit_scale_max` (the gradient to t is zero while clamped, as in the reference)."""
        return self.logit_scale.exp().clamp(max=self.cfg.logit_scale_max)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor) -> ClipOutput:
        img, txt = self.encode_image(images), self.encode_text(input_ids)  # (B, E), (B', E), unit norm
        logits_per_image = self.scale() * img @ txt.t()  # (B, B') cosine similarities * exp(t)
        if hasattr(self, "logit_bias"):
            logits_per_image = logits_per_image + self.logit_bias
        return ClipOutput(img, txt, logits_per_image, logits_per_image.t())


# Sizes of openai/CLIP's released models (HF `openai/clip-vit-*`) and a CPU-sized one.
CLIP_VARIANTS: dict[str, dict] = {
    "clip_vit_base_patch32_224": dict(),  # 151,277,313 parameters
    "clip_vit_base_patch16_224": dict(patch_size=16),  # 149,620,737
    "clip_vit_large_patch14_224": dict(
        patch_size=14, embed_dim=768, vision_width=1024, vision_depth=24, vision_heads=16, text_width=768,
        text_heads=12,
    ),  # 427,616,513
    # trains from scratch on a CPU in minutes; exact GELU (open_clip's default for models trained from scratch)
    "clip_vit_tiny_patch8_32": dict(
        img_size=32, patch_size=8, embed_dim=64, vision_width=64, vision_depth=2, vision_heads=2, text_width=64,
        text_depth=2, text_heads=2, quick_gelu=False,
    ),
}  # fmt: skip


def bert_config(cfg: ClipConfig) -> BertConfig:
    """The BERT encoder of a `text_tower="bert"` config: its text sizes, context_length position rows, no pooler."""
    return BertConfig(
        vocab_size=cfg.vocab_size, width=cfg.text_width, depth=cfg.text_depth, num_heads=cfg.text_heads,
        mlp_dim=cfg.text_mlp_dim or int(cfg.text_width * cfg.mlp_ratio), max_positions=cfg.context_length, pooler=False,
    )  # fmt: skip


def create_clip(name: str, **overrides) -> ClipModel:
    """The CLIP variant `name` (a key of CLIP_VARIANTS), with config fields overridden by keyword."""
    if name not in CLIP_VARIANTS:
        close = difflib.get_close_matches(name, list(CLIP_VARIANTS), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"unknown CLIP model {name!r}: known are {', '.join(CLIP_VARIANTS)}{hint}")
    return ClipModel(ClipConfig(**{**CLIP_VARIANTS[name], **overrides}))


register_variants(CLIP_VARIANTS, family="clip", config_cls=ClipConfig, model_cls=ClipModel, kind="clip")
