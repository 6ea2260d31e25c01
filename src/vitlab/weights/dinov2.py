"""DINOv2 checkpoints -> vitlab (timm-named) ViT state dicts and configs: transformers and facebookresearch/dinov2.

Pure dict -> dict functions (no model is imported).
- transformers `Dinov2Model` / `Dinov2WithRegistersModel` (model_type "dinov2" / "dinov2_with_registers"): the layout
  `save_pretrained` writes (`encoder.layer.N.attention.attention.query`, `layer_scale1.lambda1`, the SwiGLU's packed
  `mlp.weights_in`) and transformers 5's module names (`attention.q_proj`, `mlp.gate_proj` + `mlp.up_proj`).
  q, k and v are fused into `attn.qkv`; the gate and up projections into the packed `mlp.fc1` (gate first).
- facebookresearch/dinov2's state dicts are timm's names already, but for `register_tokens` (vitlab's `reg_token`),
  the SwiGLU's `mlp.w12` / `mlp.w3` (`mlp.fc1` / `mlp.fc2`) and the chunked blocks of FSDP training
  (`blocks.C.N.` -> `blocks.N.`).
`Dinov2ForImageClassification`'s head reads the class token beside the mean patch token, which vitlab's heads do not:
its directories are refused, naming the `Dinov2Model` weights to use instead.
"""

from __future__ import annotations

import re

import torch

from vitlab.errors import CheckpointError, ConfigError
from vitlab.weights.hf import HfConverter, fuse_qkv, pick_variant, rename

_PREFIXES = ("dinov2_with_registers.", "dinov2.")
_L = r"^(?:encoder\.layer|layers)\.(\d+)\."
_HF_RULES = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.mask_token$", "mask_token"),
    (r"^embeddings\.register_tokens$", "reg_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (_L + r"attention\.attention\.(query|key|value)\.", r"blocks.\1.attn.__\2__."),
    (_L + r"attention\.(q|k|v)_proj\.", r"blocks.\1.attn.__\2__."),
    (_L + r"attention\.(?:output\.dense|o_proj)\.", r"blocks.\1.attn.proj."),
    (_L + r"layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (_L + r"norm([12])\.", r"blocks.\1.norm\2."),
    (_L + r"mlp\.(fc1|fc2)\.", r"blocks.\1.mlp.\2."),
    (_L + r"mlp\.weights_in\.", r"blocks.\1.mlp.fc1."),
    (_L + r"mlp\.(?:weights_out|down_proj)\.", r"blocks.\1.mlp.fc2."),
    (_L + r"mlp\.(gate|up)_proj\.", r"blocks.\1.mlp.__\2__."),
    (r"^layernorm\.", "norm."),
]
_GATE_UP = re.compile(r"^(.*)\.__(gate|up)__\.(weight|bias)$")

_OFFICIAL_RULES = [
    (r"^register_tokens$", "reg_token"),
    (r"^blocks\.\d+\.(\d+)\.", r"blocks.\1."),  # block chunks keep the global block index
]
_OFFICIAL_PARTS = [(".mlp.w12.", ".mlp.fc1."), (".mlp.w3.", ".mlp.fc2.")]


def _fuse_gate_up(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = _GATE_UP.match(key)
        if m:
            parts.setdefault((m[1], m[3]), {})[m[2]] = value
        else:
            out[key] = value
    for (prefix, param), p in parts.items():
        if set(p) != {"gate", "up"}:
            raise CheckpointError(f"{prefix}: the SwiGLU's {param} has only the {sorted(p)} projection")
        out[f"{prefix}.fc1.{param}"] = torch.cat([p["gate"], p["up"]], dim=0)  # silu(first half) * second half
    return out


def is_dinov2_official(state: dict) -> bool:
    return "register_tokens" in state or any(".mlp.w12." in k for k in state)


def convert_dinov2_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """facebookresearch/dinov2 keys -> vitlab keys (the rest are timm's names, which are vitlab's)."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        for pattern, repl in _OFFICIAL_RULES:
            key = re.sub(pattern, repl, key)
        for old, new in _OFFICIAL_PARTS:
            key = key.replace(old, new)
        out[key] = value
    return out


def convert_dinov2_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' Dinov2Model / Dinov2WithRegistersModel keys -> vitlab keys."""
    if "classifier.weight" in state:
        raise CheckpointError(
            "a Dinov2ForImageClassification checkpoint: its head reads the class token beside the mean patch token, "
            "which vitlab's ViT head does not; load the backbone's weights (Dinov2Model) and train a new head"
        )
    return _fuse_gate_up(fuse_qkv(rename(state, _PREFIXES, _HF_RULES)))


def convert_dinov2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Either DINOv2 layout -> vitlab names, told apart by their keys."""
    if any(k.startswith(("embeddings.", *_PREFIXES)) for k in state):
        return convert_dinov2_hf(state)
    return convert_dinov2_official(state)


def dinov2_fields(config: dict) -> dict:
    """The ViTConfig fields a transformers Dinov2Config / Dinov2WithRegistersConfig fixes, weights aside."""
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"config.json: hidden_act={act!r} is not supported (vitlab's ViT uses exact 'gelu')")
    registers = config.get("model_type") == "dinov2_with_registers"
    return dict(
        embed_dim=config["hidden_size"],
        depth=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        mlp_ratio=float(config.get("mlp_ratio", 4)),
        patch_size=config["patch_size"],
        img_size=config["image_size"],
        in_chans=config.get("num_channels", 3),
        qkv_bias=config.get("qkv_bias", True),
        mlp_layer="swiglu" if config.get("use_swiglu_ffn", False) else "mlp",
        reg_tokens=config.get("num_register_tokens", 0) if registers else 0,
        # the registers model always has one; Dinov2Config says so
        mask_token=registers or config.get("use_mask_token", True),
        pos_embed_antialias=registers,  # transformers' Dinov2WithRegisters resizes its table with antialiasing
        norm_eps=config.get("layer_norm_eps", 1e-6),
        init_values=float(config.get("layerscale_value", 1.0)),
    )


def dinov2_arch_from_config(config: dict, state: dict[str, torch.Tensor]) -> dict:
    return dict(dinov2_fields(config), num_classes=0, labels=[], class_token=True, global_pool="token")


# ----- registered variants a config.json can name (models/vit.py DINOV2_VARIANTS; a test keeps them equal) ----------
_SIZES = {"small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16), "giant": (1536, 40, 24)}


def _v(size: str, reg: int) -> dict:
    D, L, H = _SIZES[size]
    return dict(
        embed_dim=D, depth=L, num_heads=H, mlp_ratio=4.0, patch_size=14, img_size=518, in_chans=3, qkv_bias=True,
        mlp_layer="swiglu" if size == "giant" else "mlp", reg_tokens=reg, mask_token=True,
        pos_embed_antialias=bool(reg),
    )  # fmt: skip


DINOV2_HF_VARIANTS = {  # the base first: it wins ties
    **{f"vit_{s}_patch14_dinov2": _v(s, 0) for s in ("base", "small", "large", "giant")},
    **{f"vit_{s}_patch14_reg4_dinov2": _v(s, 4) for s in ("base", "small", "large", "giant")},
}
_NUMERICS = ("norm_eps", "init_values")


def dinov2_model_for(config: dict) -> tuple[str, dict]:
    """config.json -> (registered name, overrides): DINOv2 ViT-S/14 -> vit_small_patch14_dinov2; with registers ->
    a *_reg4_dinov2 variant (another register count as an override)."""
    return pick_variant(dinov2_fields(config), DINOV2_HF_VARIANTS, numerics=_NUMERICS)


def dinov2_to_hf(cfg: dict, state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    raise ConfigError("writing DINOv2 as a transformers Dinov2Model is not supported; save a vitlab checkpoint")


HF = HfConverter(
    family="dinov2",
    # transformers' LayerScale, the official register tokens or packed SwiGLU (plain official files are timm's names)
    marker=("layer_scale1.lambda1", "register_tokens", ".mlp.w12.weight"),
    convert=convert_dinov2,
    arch=dinov2_arch_from_config,
    model_for=dinov2_model_for,
    to_hf=dinov2_to_hf,
)
