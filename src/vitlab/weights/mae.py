"""Hugging Face transformers `ViTMAEForPreTraining` checkpoints <-> vitlab `MaskedAutoencoder` state dicts.

The encoder (`vit.*`) is a ViT in transformers' layout: `vitlab.weights.vit`'s renaming applies, under `encoder.`.
The decoder's blocks (`decoder.decoder_layers.N`) have the same layout as the encoder's. Both position tables are
frozen parameters in either library and load as they are. The encoder is chosen as `vitlab.weights.vit` chooses a
ViT for a ViT config (the nearest registered variant, its differences as `encoder_args`).
"""

from __future__ import annotations

import re

import torch

from vitlab.weights.hf import HfConverter, hf_config, pick_variant, rename_to_hf, require, split_qkv
from vitlab.weights.vit import _TO_HF as _VIT_TO_HF
from vitlab.weights.vit import VIT_VARIANTS, convert_vit, vit_model_for

_DECODER_TOP = {
    "decoder.decoder_embed.weight": "decoder_embed.weight",
    "decoder.decoder_embed.bias": "decoder_embed.bias",
    "decoder.mask_token": "mask_token",
    "decoder.decoder_pos_embed": "decoder_pos_embed",
    "decoder.decoder_norm.weight": "decoder_norm.weight",
    "decoder.decoder_norm.bias": "decoder_norm.bias",
    "decoder.decoder_pred.weight": "decoder_pred.weight",
    "decoder.decoder_pred.bias": "decoder_pred.bias",
}
# transformers 4 (and the hub's checkpoints) save `decoder.decoder_layers.N`; transformers 5 writes its legacy names
# back as `decoder.decoder_encoder.layer.N` and loads either
_DECODER_LAYERS = re.compile(r"^decoder\.(?:decoder_layers|decoder_encoder\.layer)\.(\d+)\.")


def convert_mae(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' ViTMAEForPreTraining keys -> vitlab MaskedAutoencoder keys (q, k, v fused)."""
    encoder, layers, out = {}, {}, {}
    for key, value in state.items():
        if key in _DECODER_TOP:
            out[_DECODER_TOP[key]] = value
        elif _DECODER_LAYERS.match(key):
            layers[_DECODER_LAYERS.sub(r"encoder.layer.\1.", key)] = value  # the encoder's block layout
        elif key.startswith("vit."):
            encoder[key] = value
        else:
            out[key] = value  # nothing vitlab knows: reported as unexpected by the loader
    out.update({f"encoder.{k}": v for k, v in convert_vit(encoder).items()})
    out.update({"decoder_" + k: v for k, v in convert_vit(layers).items()})  # blocks.N -> decoder_blocks.N
    return out


def mae_fields(config: dict) -> dict:
    """The decoder's and masking fields of a transformers ViTMAEConfig."""
    Dd = config["decoder_hidden_size"]
    return dict(
        img_size=config["image_size"],
        in_chans=config.get("num_channels", 3),
        decoder_embed_dim=Dd,
        decoder_depth=config["decoder_num_hidden_layers"],
        decoder_num_heads=config["decoder_num_attention_heads"],
        decoder_mlp_ratio=config["decoder_intermediate_size"] / Dd,
        qkv_bias=config.get("qkv_bias", True),
        norm_eps=config.get("layer_norm_eps", 1e-12),
        mask_ratio=config.get("mask_ratio", 0.75),
        norm_pix_loss=config.get("norm_pix_loss", False),
    )


def _encoder(config: dict) -> tuple[str, dict]:
    """(registered ViT name, its overrides but the size fields the MAE config sets)."""
    name, overrides = vit_model_for({**config, "model_type": "vit"})
    return name, {k: v for k, v in overrides.items() if k not in ("img_size", "in_chans")}


def mae_arch_from_config(config: dict, state: dict[str, torch.Tensor]) -> dict:
    encoder, encoder_args = _encoder(config)
    # transformers' ViTMAE has no classifier and uses its class token; the fixed table comes from the weights
    return dict(mae_fields(config), encoder=encoder, encoder_args=encoder_args, fixed_pos_embed=True)


# sizes of the registered MAE variants (models/mae.py), as transformers' configs give them
MAE_VARIANTS = {
    "mae_vit_base_patch16": dict(encoder="vit_base_patch16_224", img_size=224, in_chans=3, decoder_embed_dim=512,
                                 decoder_depth=8, decoder_num_heads=16, decoder_mlp_ratio=4.0),
    "mae_vit_large_patch16": dict(encoder="vit_large_patch16_224", img_size=224, in_chans=3, decoder_embed_dim=512,
                                  decoder_depth=8, decoder_num_heads=16, decoder_mlp_ratio=4.0),
    "mae_vit_huge_patch14": dict(encoder="vit_huge_patch14_224", img_size=224, in_chans=3, decoder_embed_dim=512,
                                 decoder_depth=8, decoder_num_heads=16, decoder_mlp_ratio=4.0),
}  # fmt: skip


def mae_model_for(config: dict) -> tuple[str, dict]:
    encoder, encoder_args = _encoder(config)
    fields = {k: v for k, v in mae_fields(config).items() if k not in ("qkv_bias", "mask_ratio", "norm_pix_loss")}
    name, overrides = pick_variant({**fields, "encoder": encoder}, MAE_VARIANTS, numerics=("norm_eps",))
    extra = {k: v for k, v in mae_fields(config).items() if k in ("qkv_bias", "mask_ratio", "norm_pix_loss")}
    return name, {**overrides, **extra, "encoder_args": encoder_args}


# ----- vitlab -> transformers ---------------------------------------------------------------------------------------
def mae_to_hf(cfg: dict, state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """MaeConfig fields + weights -> a ViTMAEForPreTraining directory's config and state dict (a ViT encoder with
    the class token, as transformers' ViTMAE builds it)."""
    require(cfg["encoder"] in VIT_VARIANTS, f"encoder {cfg['encoder']!r} is not a ViT transformers' ViTMAE can hold")
    enc = {**VIT_VARIANTS[cfg["encoder"]], **cfg["encoder_args"]}
    require(
        enc.get("class_token", True) and enc.get("pos_embed", "learned") == "learned" and not enc["distilled"],
        "transformers' ViTMAE has a class token, a position table and no distillation token",
    )
    D = enc["embed_dim"]
    fields = dict(
        hidden_size=D, num_hidden_layers=enc["depth"], num_attention_heads=enc["num_heads"],
        intermediate_size=int(D * enc["mlp_ratio"]), hidden_act="gelu", image_size=cfg["img_size"],
        patch_size=enc["patch_size"], num_channels=cfg["in_chans"], qkv_bias=enc["qkv_bias"],
        layer_norm_eps=enc.get("norm_eps", 1e-6), decoder_hidden_size=cfg["decoder_embed_dim"],
        decoder_num_hidden_layers=cfg["decoder_depth"], decoder_num_attention_heads=cfg["decoder_num_heads"],
        decoder_intermediate_size=int(cfg["decoder_embed_dim"] * cfg["decoder_mlp_ratio"]),
        mask_ratio=cfg["mask_ratio"], norm_pix_loss=cfg["norm_pix_loss"],
    )  # fmt: skip
    require(
        fields["layer_norm_eps"] == cfg["norm_eps"] and enc["qkv_bias"] == cfg["qkv_bias"],
        "transformers' ViTMAE has one LayerNorm epsilon and one qkv_bias for encoder and decoder",
    )
    enc = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    out = rename_to_hf(split_qkv(enc, ("query", "key", "value")), _VIT_TO_HF, "vit.")
    dec_blocks = {k[len("decoder_") :]: v for k, v in state.items() if k.startswith("decoder_blocks.")}
    for k, v in rename_to_hf(split_qkv(dec_blocks, ("query", "key", "value")), _VIT_TO_HF, "").items():
        out["decoder.decoder_layers." + k[len("encoder.layer.") :]] = v
    out.update({hf: state[ours] for hf, ours in _DECODER_TOP.items()})
    return hf_config("vit_mae", "ViTMAEForPreTraining", fields, {"labels": [], "num_classes": 0}), out


HF = HfConverter(
    family="mae",
    marker="decoder.decoder_pred.weight",
    convert=convert_mae,
    arch=mae_arch_from_config,
    model_for=mae_model_for,
    to_hf=mae_to_hf,
)
