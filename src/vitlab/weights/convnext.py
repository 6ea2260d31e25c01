"""Hugging Face transformers ConvNeXt checkpoints <-> vitlab (timm-named) state dicts and configs."""

from __future__ import annotations

import torch

from vitlab.weights.hf import HfConverter, head_fields, hf_config, pick_variant, rename, rename_to_hf

_RULES = [
    (r"^embeddings\.patch_embeddings\.", "stem.0."),
    (r"^embeddings\.layernorm\.", "stem.1."),
    (r"^encoder\.stages\.(\d+)\.downsampling_layer\.", r"stages.\1.downsample."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.dwconv\.", r"stages.\1.blocks.\2.conv_dw."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layernorm\.", r"stages.\1.blocks.\2.norm."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.pwconv1\.", r"stages.\1.blocks.\2.mlp.fc1."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.pwconv2\.", r"stages.\1.blocks.\2.mlp.fc2."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer_scale_parameter$", r"stages.\1.blocks.\2.gamma"),
    (r"^layernorm\.", "head.norm."),
    (r"^classifier\.", "head.fc."),
]


def convert_convnext(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return rename(state, ("convnext.",), _RULES)


def convnext_fields(config: dict) -> dict:
    """The ConvNeXtConfig fields a transformers config.json fixes, weights aside."""
    return dict(
        depths=tuple(config["depths"]),
        dims=tuple(config["hidden_sizes"]),
        patch_size=config.get("patch_size", 4),
        in_chans=config.get("num_channels", 3),
        img_size=config.get("image_size", 224),
        layer_scale_init=config.get("layer_scale_init_value", 1e-6),
        head_norm_eps=config.get("layer_norm_eps", 1e-12),
    )


def convnext_arch(config: dict, state: dict[str, torch.Tensor]) -> dict:
    return dict(convnext_fields(config), **head_fields(config, state, "head.fc.weight"))


# ----- registered variants a config.json can name (models/convnext.py; tests/test_factory.py checks they agree) ------
def _v(depths: tuple, dims: tuple, patch_size: int = 4, img_size: int = 224) -> dict:
    return dict(depths=depths, dims=dims, patch_size=patch_size, in_chans=3, img_size=img_size)


CONVNEXT_VARIANTS = {  # the base first: it wins ties
    "convnext_tiny": _v((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext_small": _v((3, 3, 27, 3), (96, 192, 384, 768)),
    "convnext_base": _v((3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnext_large": _v((3, 3, 27, 3), (192, 384, 768, 1536)),
    "convnext_micro_32": _v((1, 1, 2, 1), (32, 64, 128, 256), patch_size=2, img_size=32),
}


def convnext_model_for(config: dict) -> tuple[str, dict]:
    """config.json -> (registered name, overrides), e.g. ConvNeXt-T -> `convnext_tiny`."""
    return pick_variant(convnext_fields(config), CONVNEXT_VARIANTS, numerics=("layer_scale_init", "head_norm_eps"))


# ----- vitlab -> transformers ---------------------------------------------------------------------------------------
_B = r"^stages\.(\d+)\.blocks\.(\d+)\."
_H = r"encoder.stages.\1.layers.\2."
_TO_HF = [
    (r"^stem\.0\.", "embeddings.patch_embeddings."),
    (r"^stem\.1\.", "embeddings.layernorm."),
    (r"^stages\.(\d+)\.downsample\.", r"encoder.stages.\1.downsampling_layer."),
    (_B + r"conv_dw\.", _H + "dwconv."),
    (_B + r"norm\.", _H + "layernorm."),
    (_B + r"mlp\.fc1\.", _H + "pwconv1."),
    (_B + r"mlp\.fc2\.", _H + "pwconv2."),
    (_B + r"gamma$", _H + "layer_scale_parameter"),
    (r"^head\.norm\.", "layernorm."),
    (r"^head\.fc\.", "classifier."),
]


def convnext_to_hf(cfg: dict, state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """ConvNeXtConfig fields + weights -> a ConvNextForImageClassification (its layer_norm_eps: the head's norm)."""
    fields = dict(
        num_channels=cfg["in_chans"],
        patch_size=cfg["patch_size"],
        num_stages=len(cfg["depths"]),
        hidden_sizes=list(cfg["dims"]),
        depths=list(cfg["depths"]),
        hidden_act="gelu",
        layer_scale_init_value=cfg["layer_scale_init"],
        layer_norm_eps=cfg["head_norm_eps"],
        image_size=cfg["img_size"],
        drop_path_rate=cfg["drop_path_rate"],
    )
    state = rename_to_hf(state, _TO_HF, "convnext.")
    return hf_config("convnext", "ConvNextForImageClassification", fields, cfg), state


HF = HfConverter(
    family="convnext",
    marker="embeddings.patch_embeddings.weight",
    convert=convert_convnext,
    arch=convnext_arch,
    model_for=convnext_model_for,
    to_hf=convnext_to_hf,
)
