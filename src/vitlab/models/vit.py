"""Vision Transformer and DeiT.

Papers: "An Image is Worth 16x16 Words" (Dosovitskiy et al., arXiv 2010.11929) and "Training data-efficient image
transformers & distillation through attention" (Touvron et al., arXiv 2012.12877); the self-supervised checkpoints'
architectures: DINO (Caron et al., arXiv 2104.14294: a plain ViT), DINOv2 (Oquab et al., arXiv 2304.07193: patch 14,
LayerScale, a 518x518 position table resized to each input, SwiGLU in ViT-g) and its register tokens (Darcet et al.,
"Vision Transformers Need Registers", arXiv 2309.16588).

Differences from the reference code: parameter names follow timm's (so timm state dicts load unchanged and the
Hugging Face converter in `vitlab.weights.hf` is a renaming); attention runs through SDPA and returns probabilities
only for the layers `vitlab.explain` asks for; the class token is initialised to zeros and the head to zeros as
in the official JAX code (timm uses a small normal for the token). DINOv2's table is resized with transformers'
rule (bicubic to the exact grid; antialiased for the register models), not the official repository's
`scale_factor` with a 0.1 offset, so outputs equal transformers' `Dinov2Model` / `Dinov2WithRegistersModel`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.fx import notrace
from vitlab.layers import (
    Attention,
    DropPath,
    Mlp,
    PatchEmbed,
    SwiGLU,
    resample_pos_embed,
    sincos_pos_embed_2d,
    swiglu_hidden,
)
from vitlab.models.base import (
    HALF,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageModelConfig,
    Intermediate,
    ModelBase,
    checkpointed,
    make_head,
    token_feature_info,
)
from vitlab.models.outputs import DistilledLogits
from vitlab.registry import register_variants


@dataclass(frozen=True)
class ViTConfig(ImageModelConfig):
    # img_size: the position table has (img_size / patch_size)^2 grid rows
    patch_size: int = 16  # side of a patch = kernel and stride of the embedding conv
    embed_dim: int = 768  # token width D
    depth: int = 12  # number of transformer blocks L
    num_heads: int = 12  # attention heads H; D must be divisible by H
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * D (Table 1 of the ViT paper: 4)
    qkv_bias: bool = True  # bias on the q, k, v projections (ViT and DeiT use one)
    class_token: bool = True  # prepend a learned [class] token (ViT sec. 3.1)
    distilled: bool = False  # DeiT: a distillation token after the class token and a second head
    global_pool: str = "token"  # "token": head on the class token; "avg": mean of patch tokens (GAP variant)
    # LayerNorm after pooling (fc_norm) instead of on the tokens (norm); None: after, for global_pool="avg" (timm).
    # Resolved at construction, so a later change of global_pool (reset_classifier) keeps the built layout.
    fc_norm: bool | None = None
    pos_embed: str = "learned"  # "learned" 1-D table (ViT), fixed 2-D "sincos" (MAE, big_vision), "none" (CPVT)
    # any multiple of the patch size, the position table resized (bicubic) to each input's grid (timm's name)
    dynamic_img_size: bool = False
    # resize the table with an antialiasing filter when shrinking it (DINOv2 with registers, as transformers does)
    pos_embed_antialias: bool = False
    norm_eps: float = 1e-6  # LayerNorm epsilon: 1e-6 in JAX/timm, 1e-12 in HF transformers' configs
    init_values: float | None = None  # LayerScale (CaiT, DINOv2: 1e-5): per-channel residual scales; None: off
    reg_tokens: int = 0  # register tokens after the class token, without position (Darcet et al.; DINOv2: 4)
    # DINOv2's masked-patch token (its iBOT loss): kept so its checkpoints load and count as transformers' do;
    # forward never uses it, so it is created frozen (no gradient, no DDP bucket)
    mask_token: bool = False
    mlp_layer: str = "mlp"  # "mlp" (Linear-GELU-Linear) or "swiglu" (DINOv2 ViT-g, width 2/3 of mlp_ratio * D)
    drop_rate: float = 0.0  # dropout after position embedding, in MLPs and before the head
    attn_drop_rate: float = 0.0  # dropout on attention probabilities
    drop_path_rate: float = 0.0  # stochastic depth, linearly increasing over blocks (DeiT recipe: 0.1)
    mean: tuple[float, ...] = HALF  # JAX ViT normalises with 0.5; DeiT with ImageNet statistics
    std: tuple[float, ...] = HALF

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.global_pool not in ("token", "avg", ""):
            raise ValueError(f"global_pool must be 'token', 'avg' or '' (no pooling), got {self.global_pool!r}")
        if self.pos_embed not in ("learned", "sincos", "none"):
            raise ValueError(f"pos_embed must be 'learned', 'sincos' or 'none', got {self.pos_embed!r}")
        if self.global_pool == "token" and not self.class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if self.distilled and not self.class_token:
            raise ValueError("distilled=True needs class_token=True")
        if self.fc_norm is None:
            object.__setattr__(self, "fc_norm", self.global_pool == "avg")
        if self.mlp_layer not in ("mlp", "swiglu"):
            raise ValueError(f"mlp_layer must be 'mlp' or 'swiglu', got {self.mlp_layer!r}")
        if not (isinstance(self.reg_tokens, int) and self.reg_tokens >= 0):
            raise ValueError(f"reg_tokens must be an integer >= 0, got {self.reg_tokens!r}")

    def test_overrides(self) -> dict:
        # the frozen mask token has no gradient by design; the contract's "backward reaches every parameter" is
        # about the trained ones
        return dict(depth=2, img_size=self.patch_size * 3, drop_path_rate=0.0, mask_token=False)


@notrace  # the resize depends on the input size
def pos_embed_for_grid(
    pos: torch.Tensor, own: int, grid: tuple[int, int], num_prefix: int, antialias: bool = False
) -> torch.Tensor:
    """The (1, prefix + own*own, D) table bicubically resized to `grid` (dynamic_img_size); as it is on its own grid.

    Resized in float32 whatever the table's dtype (as transformers' DINOv2), then cast back.
    """
    if grid[0] == own and grid[1] == own:
        return pos
    table = pos[:, num_prefix:].reshape(1, own, own, -1).permute(0, 3, 1, 2)  # (1, D, own, own)
    table = F.interpolate(table.float(), size=grid, mode="bicubic", align_corners=False, antialias=antialias)
    table = table.to(pos.dtype).flatten(2).transpose(1, 2)  # (1, Hp*Wp, D)
    return torch.cat([pos[:, :num_prefix], table], dim=1)  # (1, prefix + Hp*Wp, D)


class PosEmbedResize(nn.Module):
    """`pos_embed_for_grid` as a module: its forward lives in this file, so torch.fx's tracer has wrapped the function
    (it patches the globals of each module's file as the module is called) before the model's forward reaches it."""

    def __init__(self, own: int, num_prefix: int, antialias: bool) -> None:
        super().__init__()
        self.own, self.num_prefix, self.antialias = own, num_prefix, antialias

    def forward(self, pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return pos_embed_for_grid(pos, self.own, grid, self.num_prefix, self.antialias)


class LayerScale(nn.Module):
    """x * gamma, one learned scale per channel (CaiT, arXiv 2103.17239, sec. 2.1; timm's and DINOv2's `gamma`)."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x)); each branch LayerScaled where configured."""

    def __init__(self, cfg: ViTConfig, drop_path: float) -> None:
        super().__init__()
        D = cfg.embed_dim
        self.norm1 = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.attn = Attention(D, cfg.num_heads, cfg.qkv_bias, cfg.attn_drop_rate, cfg.drop_rate)
        self.ls1 = LayerScale(D, cfg.init_values) if cfg.init_values is not None else nn.Identity()
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(D, eps=cfg.norm_eps)
        if cfg.mlp_layer == "swiglu":
            self.mlp = SwiGLU(D, swiglu_hidden(D, cfg.mlp_ratio), drop=cfg.drop_rate)
        else:
            self.mlp = Mlp(D, int(D * cfg.mlp_ratio), drop=cfg.drop_rate)
        self.ls2 = LayerScale(D, cfg.init_values) if cfg.init_values is not None else nn.Identity()
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class VisionTransformer(ModelBase):
    """ViT / DeiT.

    Shapes: images (B, C, H, W) -> tokens (B, N, D) with N = prefix + Hp*Wp -> logits (B, num_classes).
    Token-level entry (masked image modelling): `embed_patches(images)` -> (B, Hp*Wp, D) with positions, then
    `forward_tokens(tokens, keep_index)` encodes the kept ones behind the prefix tokens (MAE's encoder).
    """

    global_pools = ("token", "avg")
    output_fmt = "NLC"
    first_conv = "patch_embed.proj"
    crop_pct = 0.9
    default_out_indices = 3  # features_only: the last three blocks, as timm
    accepts_token_subsets = True  # forward_tokens may encode any subset of the patches (no layer needs the grid)

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__(cfg, num_features=cfg.embed_dim)
        # a learned or sincos table fixes the grid unless resized per input (CPVT: any size)
        self.fixed_input_size = cfg.pos_embed != "none" and not cfg.dynamic_img_size
        self.dynamic_img_size = cfg.dynamic_img_size
        D = cfg.embed_dim
        self.patch_size = cfg.patch_size
        # the tokens before the patch grid: [cls, dist] carry a position row, registers come after them without one
        self.num_pos_prefix = int(cfg.class_token) + int(cfg.distilled)
        self.num_reg_tokens = cfg.reg_tokens
        self.num_prefix_tokens = self.num_pos_prefix + cfg.reg_tokens

        self.patch_embed = self.make_patch_embed(cfg)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.distilled else None
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.reg_tokens, D)) if cfg.reg_tokens else None
        self.mask_token = nn.Parameter(torch.zeros(1, D), requires_grad=False) if cfg.mask_token else None
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_pos_prefix + num_patches, D))
        elif cfg.pos_embed == "none":
            self.pos_embed = None
        else:
            # Fixed table for the patch grid; prefix tokens get no position (as in MAE's zero row).
            table = sincos_pos_embed_2d(self.patch_embed.grid_size, D)
            table = torch.cat([torch.zeros(self.num_pos_prefix, D), table])[None]
            self.register_buffer("pos_embed", table, persistent=False)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        self.pos_resize = PosEmbedResize(self.patch_embed.grid_size, self.num_pos_prefix, cfg.pos_embed_antialias)

        dpr = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.Sequential(*[Block(cfg, dpr[i]) for i in range(cfg.depth)])
        # One LayerNorm, on the tokens (norm) or after pooling (fc_norm, GAP models): timm's layout and key names.
        self.norm = nn.Identity() if cfg.fc_norm else nn.LayerNorm(D, eps=cfg.norm_eps)
        self.fc_norm = nn.LayerNorm(D, eps=cfg.norm_eps) if cfg.fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.init_weights()
        # Official JAX ViT zero-initialises the classifier: the first logits are uniform.
        self.head = make_head(D, cfg.num_classes)
        self.head_dist = make_head(D, cfg.num_classes) if cfg.distilled else None

    # ----- initialisation -------------------------------------------------------------------------------------
    def init_weights(self) -> None:
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        if self.reg_token is not None:
            nn.init.trunc_normal_(self.reg_token, std=0.02)
        self.apply(_init_linear)

    def make_patch_embed(self, cfg: ViTConfig) -> nn.Module:
        """Images -> patch tokens (B, N, D); hybrid models put a CNN here."""
        # Without a position table the model runs at any multiple of the patch size (CPVT).
        return PatchEmbed(
            cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim,
            strict_size=cfg.pos_embed != "none" and not cfg.dynamic_img_size,
        )  # fmt: skip

    # ----- public API -----------------------------------------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        tokens = ("pos_embed", "cls_token", "dist_token", "reg_token", "mask_token")
        return {n for n in tokens if isinstance(getattr(self, n, None), nn.Parameter)}

    def get_classifier_names(self) -> list[str]:
        """Parameter-name prefixes of the classifier(s): what transfer learning replaces."""
        return ["head", "head_dist"] if self.head_dist is not None else ["head"]

    def attention_layers(self) -> list[Attention]:
        return [blk.attn for blk in self.blocks]

    # ----- token-level entry (masked image modelling: MAE encodes a subset of the patches) ------------------------
    # embed_patches -> (choose tokens) -> forward_tokens equals forward_features when every patch is kept in order.
    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens with their positions added, without the prefix tokens: (B, C, H, W) -> (B, Hp*Wp, D)."""
        p = self.patch_size
        grid = (images.shape[-2] // p, images.shape[-1] // p)
        x = self.patch_embed(images)  # (B, Hp*Wp, D)
        if self.pos_embed is None:
            return x
        pos = self.pos_embed
        if self.dynamic_img_size:
            pos = pos_embed_for_grid(pos, self.patch_embed.grid_size, grid, self.num_prefix_tokens)
        return x + pos[:, self.num_prefix_tokens :]

    def forward_tokens(self, patches: torch.Tensor, keep_index: torch.Tensor | None = None) -> torch.Tensor:
        """`embed_patches`' tokens (B, N, D), or only those at `keep_index` (B, K) per sample, behind the prefix
        tokens (with their positions), through every block and the final norm: (B, prefix + K, D).

        A model whose blocks need the patch grid (CPVT's position generator) has `accepts_token_subsets` False and
        refuses this entry: use `forward_features`.
        """
        if not self.accepts_token_subsets:
            raise ValueError(f"{type(self).__name__}'s blocks need the whole patch grid: use forward_features(images)")
        if keep_index is not None:
            patches = torch.gather(patches, 1, keep_index[:, :, None].expand(-1, -1, patches.shape[-1]))  # (B, K, D)
        x = torch.cat([self._prefix_tokens(patches), patches], dim=1)  # (B, prefix + K, D)
        x = self.pos_drop(x)
        for blk in self.blocks:
            x = checkpointed(blk, x) if self.grad_checkpointing else blk(x)
        return self.norm(x)

    def set_fixed_pos_embed(self) -> None:
        """MAE's encoder table (arXiv 2111.06377, sec. A.1): the learned table filled with the 2-D sincos one (MAE's
        frequencies, zero rows for the prefix tokens) and frozen. It stays the `pos_embed` weight, so a classifier
        built from the checkpoint loads it and trains it, as MAE's fine-tuning does."""
        if not isinstance(self.pos_embed, nn.Parameter):
            raise ValueError(
                f"{type(self).__name__} has no learned position table to fix (pos_embed={self.cfg.pos_embed!r})"
            )
        D = self.num_features
        table = sincos_pos_embed_2d(self.patch_embed.grid_size, D, style="mae")
        with torch.no_grad():
            self.pos_embed.copy_(torch.cat([torch.zeros(self.num_prefix_tokens, D), table])[None])
        self.pos_embed.requires_grad_(False)

    def _prefix_tokens(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, prefix, D): the class (and distillation) token with its position row; (B, 0, D) without."""
        B = patches.shape[0]
        prefix: list[torch.Tensor] = [patches[:, :0]]
        if self.cls_token is not None:
            prefix.append(self.cls_token.expand(B, -1, -1))
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(B, -1, -1))
        x = torch.cat(prefix, dim=1)  # (B, prefix, D)
        if self.pos_embed is not None and self.num_prefix_tokens:
            x = x + self.pos_embed[:, : self.num_prefix_tokens]
        return x

    def _pos_embed(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        B = x.shape[0]
        prefix: list[torch.Tensor] = []
        if self.cls_token is not None:
            prefix.append(self.cls_token.expand(B, -1, -1))
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(B, -1, -1))
        x = torch.cat(prefix + [x], dim=1)  # (B, N, D), order [cls, dist, patches] as in DeiT
        if self.pos_embed is not None:
            pos = self.pos_embed
            if self.dynamic_img_size:
                pos = self.pos_resize(pos, grid)
            x = x + pos
        if self.reg_token is not None:  # registers after the class token, added after the positions (sec. 2)
            P = self.num_pos_prefix
            x = torch.cat([x[:, :P], self.reg_token.expand(B, -1, -1), x[:, P:]], dim=1)  # (B, N + R, D)
        return self.pos_drop(x)

    def _tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(tokens (B, N, D), patch grid (Hp, Wp))."""
        p = self.patch_size
        grid = (images.shape[-2] // p, images.shape[-1] // p)
        return self._pos_embed(self.patch_embed(images), grid), grid

    def _after_block(self, i: int, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Hook between blocks: nothing in ViT; CPVT's position generator after block 0."""
        return x

    def _forward_trunk(
        self, x: torch.Tensor, take: list[int] | None = None, stop: int | None = None
    ) -> tuple[torch.Tensor, list[Intermediate]]:
        x, grid = self._tokens(x)
        outs: list[Intermediate] = []
        for i, blk in enumerate(self.blocks):
            if stop is None or i <= stop:  # (TorchScript has no `break` in a loop over modules)
                x = checkpointed(blk, x) if self.grad_checkpointing and not torch.jit.is_scripting() else blk(x)
                x = self._after_block(i, x, grid)
                if take is not None and i in take:
                    outs.append((x, grid))
        return (x if stop is not None else self.norm(x)), outs  # (B, N, D); unnormalised when stopped early

    def _final_norm(self) -> nn.Module | None:
        return None if self.cfg.fc_norm else self.norm

    def _feature_info(self) -> list[dict]:
        return token_feature_info(len(self.blocks), self.num_features, self.patch_size)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_pool == "avg":
            return x[:, self.num_prefix_tokens :].mean(dim=1)
        return x[:, 0] if self.global_pool == "token" else x  # "": every token (B, N, D)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        feats = self.head_drop(self.fc_norm(self._pool(x)))
        if pre_logits or self.global_pool == "":
            return feats
        if self.head_dist is None:
            return self.head(feats)
        # DeiT inference: average the class-token and distillation-token predictions (sec. 5.1).
        return (self.head(feats) + self.head_dist(self.head_drop(x[:, 1]))) / 2

    def forward_distill(self, x: torch.Tensor) -> DistilledLogits:
        """Both DeiT heads separately, for training with a teacher."""
        if self.head_dist is None:
            raise ValueError("forward_distill needs a distilled model (a *_distilled_* variant or distilled=True)")
        x = self.forward_features(x)
        cls = self.head(self.head_drop(self.fc_norm(self._pool(x))))
        return DistilledLogits(cls=cls, dist=self.head_dist(self.head_drop(x[:, 1])))

    # ----- checkpoint adaptation ------------------------------------------------------------------------------
    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Resample a learned position table saved for another image size to this model's grid."""
        pe = state.get("pos_embed")
        own = self.pos_embed
        if isinstance(own, nn.Parameter) and pe is not None and pe.shape != own.shape and pe.shape[-1] == own.shape[-1]:
            g = self.patch_embed.grid_size
            state = dict(state, pos_embed=resample_pos_embed(pe, (g, g), self.num_pos_prefix))
        return state


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


# ----- registered variants: timm's names and sizes (REFERENCE.md, ViT Table 1) ------------------------------------
_TI = dict(embed_dim=192, depth=12, num_heads=3)
_S = dict(embed_dim=384, depth=12, num_heads=6)
_B = dict(embed_dim=768, depth=12, num_heads=12)
_L = dict(embed_dim=1024, depth=24, num_heads=16)
_H = dict(embed_dim=1280, depth=32, num_heads=16)
_DEIT = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD)
MICRO_DIGITS = dict(img_size=8, in_chans=1, num_classes=10, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0)

_VARIANTS: dict[str, dict] = {
    "vit_tiny_patch16_224": dict(**_TI, patch_size=16),
    "vit_tiny_patch16_384": dict(**_TI, patch_size=16, img_size=384),
    "vit_small_patch16_224": dict(**_S, patch_size=16),
    "vit_small_patch16_384": dict(**_S, patch_size=16, img_size=384),
    "vit_small_patch32_224": dict(**_S, patch_size=32),
    "vit_base_patch8_224": dict(**_B, patch_size=8),
    "vit_base_patch16_224": dict(**_B, patch_size=16),
    "vit_base_patch16_384": dict(**_B, patch_size=16, img_size=384),
    "vit_base_patch32_224": dict(**_B, patch_size=32),
    "vit_base_patch32_384": dict(**_B, patch_size=32, img_size=384),
    "vit_large_patch16_224": dict(**_L, patch_size=16),
    "vit_large_patch16_384": dict(**_L, patch_size=16, img_size=384),
    # timm's defaults for these two are the in21k weights without a classifier
    "vit_large_patch32_224": dict(**_L, patch_size=32, num_classes=0),
    "vit_huge_patch14_224": dict(**_H, patch_size=14, num_classes=0),
    "deit_tiny_patch16_224": dict(**_TI, **_DEIT),
    "deit_small_patch16_224": dict(**_S, **_DEIT),
    "deit_base_patch16_224": dict(**_B, **_DEIT),
    "deit_base_patch16_384": dict(**_B, **_DEIT, img_size=384),
    "deit_tiny_distilled_patch16_224": dict(**_TI, **_DEIT, distilled=True),
    "deit_small_distilled_patch16_224": dict(**_S, **_DEIT, distilled=True),
    "deit_base_distilled_patch16_224": dict(**_B, **_DEIT, distilled=True),
    "deit_base_distilled_patch16_384": dict(**_B, **_DEIT, distilled=True, img_size=384),
    # Small configs for 8x8 digits and 16x16 images (the CPU demo and tests), and 32x32 (CIFAR); not in timm.
    # On the 1,437 training digits, 2x2 patches (16 tokens) overfit without stochastic depth; 4x4 patches learn fastest.
    "vit_micro_patch2_8": dict(**MICRO_DIGITS, patch_size=2, drop_path_rate=0.1),
    "vit_micro_patch4_8": dict(**MICRO_DIGITS, patch_size=4),
    "vit_micro_patch4_16": {**MICRO_DIGITS, "patch_size": 4, "img_size": 16},
    "deit_micro_distilled_patch4_8": dict(**MICRO_DIGITS, patch_size=4, distilled=True),
    "vit_mini_patch4_32": dict(img_size=32, patch_size=4, num_classes=10, embed_dim=192, depth=6, num_heads=3),
    # DINO (arXiv 2104.14294) backbones under timm's tagged names: plain ViTs without a head, ImageNet statistics;
    # any multiple of the patch size, as the official code interpolates its table
    "vit_small_patch16_224.dino": dict(**_S, **_DEIT, patch_size=16, num_classes=0, dynamic_img_size=True),
    "vit_small_patch8_224.dino": dict(**_S, **_DEIT, patch_size=8, num_classes=0, dynamic_img_size=True),
    "vit_base_patch16_224.dino": dict(**_B, **_DEIT, patch_size=16, num_classes=0, dynamic_img_size=True),
    "vit_base_patch8_224.dino": dict(**_B, **_DEIT, patch_size=8, num_classes=0, dynamic_img_size=True),
}

register_variants(_VARIANTS, family="vit", config_cls=ViTConfig, model_cls=VisionTransformer)

# DINOv2 (arXiv 2304.07193, Table 16 sizes; ViT-g: 1536 wide, 40 blocks, 24 heads, SwiGLU): patch 14, LayerScale
# 1e-5, the 37x37 table of 518x518 pre-training resized to each input, the frozen mask token, no head (timm's names).
_DINOV2 = dict(
    img_size=518, patch_size=14, init_values=1e-5, dynamic_img_size=True, mask_token=True, num_classes=0, **_DEIT
)
_G = dict(embed_dim=1536, depth=40, num_heads=24, mlp_layer="swiglu")
_REG4 = dict(reg_tokens=4, pos_embed_antialias=True)
DINOV2_VARIANTS: dict[str, dict] = {
    "vit_small_patch14_dinov2": dict(**_S, **_DINOV2),
    "vit_base_patch14_dinov2": dict(**_B, **_DINOV2),
    "vit_large_patch14_dinov2": dict(**_L, **_DINOV2),
    "vit_giant_patch14_dinov2": dict(**_G, **_DINOV2),
    "vit_small_patch14_reg4_dinov2": dict(**_S, **_DINOV2, **_REG4),
    "vit_base_patch14_reg4_dinov2": dict(**_B, **_DINOV2, **_REG4),
    "vit_large_patch14_reg4_dinov2": dict(**_L, **_DINOV2, **_REG4),
    "vit_giant_patch14_reg4_dinov2": dict(**_G, **_DINOV2, **_REG4),
}
register_variants(DINOV2_VARIANTS, family="dinov2", config_cls=ViTConfig, model_cls=VisionTransformer)
