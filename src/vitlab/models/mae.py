"""Masked autoencoder: a ViT encoder on the visible patches, a light decoder that predicts the masked ones' pixels.

He et al., "Masked Autoencoders Are Scalable Vision Learners", arXiv 2111.06377. Sec. 3: mask 75% of the patches
per sample at random (`vitlab.ops.masking`); the encoder sees the visible patches only, with their positions; the
decoder embeds the encoder's tokens to its own width, puts a shared learned mask token at every masked position,
adds fixed 2-D sine-cosine positions (to every token, the class token's row zero) and runs its blocks; a linear layer
predicts each patch's p*p*C pixels. Sec. A.1: the decoder is 512 wide, 8 blocks; the encoder's position table is the
fixed sine-cosine one too.

How this file differs from the reference code (`models_mae.py`, transformers' `ViTMAEForPreTraining`):
- the encoder is any registered ViT-like model, reached through its public token-level entry only
  (`embed_patches`, `forward_tokens(tokens, keep_index)`, `num_prefix_tokens`, `patch_size`, `num_features`), so
  it is the same model a classifier fine-tunes (`vitlab train --pretrained MAE_RUN --model ENCODER`). Its learned
  position table is filled with MAE's sine-cosine table and frozen (`set_fixed_pos_embed`), kept in its weights as
  timm's and transformers' MAE checkpoints keep it, and trained again when fine-tuned (MAE's fine-tuning recipe);
- the model computes no loss (`vitlab.losses.mae`); `norm_pix_loss` in the config says what the decoder was
  trained to predict (per-patch normalised pixels), which the loss and the reconstruction pictures need.

Registered with kind "mae": `model(images, noise=None) -> MaeOutput`; the classifier contract does not apply.
Shapes: images (B, C, H, W) -> N = Hp*Wp patches, K = int(N * (1 - mask_ratio)) visible; latent (B, P + K, D) with
P prefix tokens; pred (B, N, p*p*C); mask (B, N), 1 = masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.utils.checkpoint
from torch import nn

from vitlab.layers import sincos_pos_embed_2d
from vitlab.models.base import IMAGENET_MEAN, IMAGENET_STD
from vitlab.models.outputs import MaeOutput
from vitlab.models.vit import Block, ViTConfig
from vitlab.ops.masking import RandomMask, random_masking, unshuffle
from vitlab.ops.patchify import patchify, unpatchify
from vitlab.registry import get_entry, register_variants

__all__ = ["MAE_VARIANTS", "MaeConfig", "MaskedAutoencoder"]

ENCODER_API = ("embed_patches", "forward_tokens", "num_prefix_tokens", "patch_size", "num_features")


@dataclass(frozen=True)
class MaeConfig:
    """Defaults: ViT-B/16 encoder, the paper's 512-wide 8-block decoder (sec. A.1). Frozen: `dataclasses.replace`."""

    encoder: str = "vit_base_patch16_224"  # registered ViT-like model, built headless (num_classes=0)
    # the encoder's own config overrides (e.g. norm_eps=1e-12 for transformers' weights); img_size, in_chans and
    # num_classes come from the fields below
    encoder_args: dict = field(default_factory=dict)
    img_size: int = 224  # square input side; N = (img_size / patch_size)^2 patches
    in_chans: int = 3  # image channels
    fixed_pos_embed: bool = True  # encoder's table = MAE's 2-D sincos, not trained (sec. A.1); False: learned
    decoder_embed_dim: int = 512  # decoder width (sec. A.1: 512; Table 1b: width 512 is as good as wider)
    decoder_depth: int = 8  # decoder blocks (Table 1a: 8)
    decoder_num_heads: int = 16  # decoder heads (head dim 32, the reference's)
    decoder_mlp_ratio: float = 4.0  # decoder MLP hidden = ratio * width
    qkv_bias: bool = True  # bias on the decoder's q, k, v (as the encoder's)
    norm_eps: float = 1e-6  # the decoder's LayerNorm epsilon (transformers' configs: 1e-12)
    mask_ratio: float = 0.75  # share of patches masked per sample (Fig. 5: 75% is best for fine-tuning and probing)
    norm_pix_loss: bool = False  # the target is each patch's pixels normalised by their mean and std (Table 1d)
    mean: tuple[float, ...] = IMAGENET_MEAN  # input normalisation (MAE trains on ImageNet-normalised images)
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        for name in ("mean", "std"):  # JSON round trips give lists: keep the config comparable
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "encoder_args", dict(self.encoder_args))
        taken = sorted({"img_size", "in_chans", "num_classes"} & set(self.encoder_args))
        if taken:
            raise ValueError(f"encoder_args may not set {', '.join(taken)}: the MAE config's own fields set them")
        if not 0 <= self.mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        for name in ("img_size", "in_chans", "decoder_embed_dim", "decoder_depth", "decoder_num_heads"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise ValueError(
                f"decoder_embed_dim={self.decoder_embed_dim} is not divisible by decoder_num_heads="
                f"{self.decoder_num_heads}"
            )


class MaskedAutoencoder(nn.Module):
    """MAE in data-flow order: patchify -> random masking -> encoder -> decoder (the loss is `losses.mae`)."""

    def __init__(self, cfg: MaeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        entry = get_entry(cfg.encoder)
        self.encoder = entry.factory(img_size=cfg.img_size, in_chans=cfg.in_chans, num_classes=0, **cfg.encoder_args)
        self.encoder.model_name = entry.name
        lacking = [a for a in ENCODER_API if not hasattr(self.encoder, a)]
        if lacking or not getattr(self.encoder, "accepts_token_subsets", False):
            raise ValueError(
                f"encoder {cfg.encoder!r} has no token-level entry for masked inputs (needs {', '.join(ENCODER_API)} "
                "and accepts_token_subsets): use a ViT-like model"
            )
        if cfg.fixed_pos_embed:
            self.encoder.set_fixed_pos_embed()
        self.patch_size = p = self.encoder.patch_size
        if cfg.img_size % p:
            raise ValueError(f"img_size={cfg.img_size} is not a multiple of the encoder's patch size {p}")
        self.grid = (cfg.img_size // p, cfg.img_size // p)
        self.num_patches = self.grid[0] * self.grid[1]
        self.num_prefix_tokens = P = self.encoder.num_prefix_tokens
        D, Dd = self.encoder.num_features, cfg.decoder_embed_dim

        self.decoder_embed = nn.Linear(D, Dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, Dd))
        # Fixed, as in the reference: a parameter without gradient, so checkpoints (and transformers') carry it.
        table = torch.cat([torch.zeros(P, Dd), sincos_pos_embed_2d(self.grid[0], Dd, style="mae")])
        self.decoder_pos_embed = nn.Parameter(table[None], requires_grad=False)  # (1, P + N, Dd)
        block_cfg = ViTConfig(
            embed_dim=Dd, depth=cfg.decoder_depth, num_heads=cfg.decoder_num_heads, mlp_ratio=cfg.decoder_mlp_ratio,
            qkv_bias=cfg.qkv_bias, norm_eps=cfg.norm_eps,
        )  # fmt: skip
        self.decoder_blocks = nn.Sequential(*[Block(block_cfg, 0.0) for _ in range(cfg.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(Dd, eps=cfg.norm_eps)
        self.decoder_pred = nn.Linear(Dd, p * p * cfg.in_chans)  # each patch's pixels, (row, column, channel)
        self.grad_checkpointing = False
        self._init_decoder()

    def _init_decoder(self) -> None:
        # The reference: xavier-uniform Linear weights, zero biases, N(0, 0.02) mask token.
        for m in [self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred]:
            for mod in m.modules():
                if isinstance(mod, nn.Linear):
                    nn.init.xavier_uniform_(mod.weight)
                    if mod.bias is not None:
                        nn.init.zeros_(mod.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    # ----- what the engine, the transforms and the optimiser read ------------------------------------------------
    @property
    def pretrained_cfg(self) -> dict:
        c = self.cfg
        return dict(input_size=(c.in_chans, c.img_size, c.img_size), mean=c.mean, std=c.std, crop_pct=1.0,
                    interpolation="bicubic")  # fmt: skip

    def no_weight_decay(self) -> set[str]:
        return {"mask_token", "decoder_pos_embed"} | {f"encoder.{n}" for n in self.encoder.no_weight_decay()}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)
        self.grad_checkpointing = enable

    # ----- data flow ----------------------------------------------------------------------------------------------
    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, p*p*C): the reconstruction target's layout."""
        return patchify(images, self.patch_size)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, N, p*p*C) -> (B, C, H, W)."""
        return unpatchify(patches, self.patch_size, self.grid, self.cfg.in_chans)

    def forward_encoder(
        self, images: torch.Tensor, noise: torch.Tensor | None = None, mask_ratio: float | None = None
    ) -> tuple[torch.Tensor, RandomMask]:
        """(latent (B, P + K, D), RandomMask): the visible patches of each sample, encoded."""
        tokens = self.encoder.embed_patches(images)  # (B, N, D) with positions
        B, N, _ = tokens.shape
        if noise is None:
            noise = torch.rand(B, N, device=tokens.device)
        elif noise.shape != (B, N):
            raise ValueError(f"noise must be (B, N) = ({B}, {N}), got {tuple(noise.shape)}")
        m = random_masking(noise, self.cfg.mask_ratio if mask_ratio is None else mask_ratio)
        return self.encoder.forward_tokens(tokens, m.ids_keep), m

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """(B, P + K, D) encoded tokens -> (B, N, p*p*C) predicted pixels of every patch, in patch order."""
        P = self.num_prefix_tokens
        x = self.decoder_embed(latent)  # (B, P + K, Dd)
        x = torch.cat([x[:, :P], unshuffle(x[:, P:], self.mask_token, ids_restore)], dim=1)  # (B, P + N, Dd)
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, P:]  # (B, N, p*p*C), the prefix dropped

    def forward(
        self, images: torch.Tensor, noise: torch.Tensor | None = None, mask_ratio: float | None = None
    ) -> MaeOutput:
        """noise (B, N): the per-patch values whose sort picks the visible patches (default uniform random);
        mask_ratio: another share to mask than the config's (MAE Fig. 4 shows a 75% model at other ratios)."""
        latent, m = self.forward_encoder(images, noise, mask_ratio)
        return MaeOutput(self.forward_decoder(latent, m.ids_restore), m.mask, m.ids_restore, latent)

    def target(self, images: torch.Tensor) -> torch.Tensor:
        """(B, N, p*p*C): what the decoder learns to predict — pixels, or per-patch normalised ones."""
        t = self.patchify(images)
        if self.cfg.norm_pix_loss:
            mean, var = t.mean(dim=-1, keepdim=True), t.var(dim=-1, keepdim=True)  # unbiased var, as the reference
            t = (t - mean) / (var + 1e-6) ** 0.5
        return t

    def reconstruct(self, images: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images in the model's input space from `pred`: a norm-pix prediction is given each true
        patch's mean and std back (as MAE's visualisation does)."""
        if self.cfg.norm_pix_loss:
            t = self.patchify(images)
            mean, var = t.mean(dim=-1, keepdim=True), t.var(dim=-1, keepdim=True)
            pred = pred * (var + 1e-6) ** 0.5 + mean
        return self.unpatchify(pred)


# ----- registered variants: the paper's ViT-B/L/H with the 512 x 8 decoder, and CPU-sized ones ----------------------
MAE_VARIANTS: dict[str, dict] = {
    "mae_vit_base_patch16": dict(encoder="vit_base_patch16_224"),  # 111,907,840 parameters, as transformers'
    "mae_vit_large_patch16": dict(encoder="vit_large_patch16_224"),
    "mae_vit_huge_patch14": dict(encoder="vit_huge_patch14_224"),
    # 8x8 digits: 16 patches of 2x2, 4 visible; stochastic depth off (MAE pre-trains without it)
    "mae_vit_micro_patch2_8": dict(
        encoder="vit_micro_patch2_8", encoder_args={"drop_path_rate": 0.0}, img_size=8, in_chans=1,
        decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4, mean=(0.5,), std=(0.5,),
    ),
    # 28x28 MNIST: 49 patches of 4x4, 12 visible
    "mae_vit_micro_patch4_28": dict(
        encoder="vit_micro_patch4_8", img_size=28, in_chans=1, decoder_embed_dim=64, decoder_depth=2,
        decoder_num_heads=4, mean=(0.5,), std=(0.5,),
    ),
    # 32x32 (CIFAR): 64 patches of 4x4, 16 visible
    "mae_vit_mini_patch4_32": dict(
        encoder="vit_mini_patch4_32", img_size=32, decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4,
    ),
}  # fmt: skip


def encoder_checkpoint_fields(cfg: dict) -> tuple[str, dict]:
    """(the encoder's registered name, its config fields) from an MAE config's fields: what a classifier built from
    an MAE checkpoint's encoder needs (`vitlab.factory`)."""
    c = MaeConfig(**cfg)
    return c.encoder, {**c.encoder_args, "img_size": c.img_size, "in_chans": c.in_chans, "mean": c.mean, "std": c.std}


register_variants(MAE_VARIANTS, family="mae", config_cls=MaeConfig, model_cls=MaskedAutoencoder, kind="mae")
