"""timm's hub layout (`config.json` + `model.safetensors`): the architecture and `model_args` that rebuild a model.

vitlab's parameter names are timm's, so the weights go across unchanged. What this file knows is how each family's
config reads as timm's constructor arguments, and which settings timm's classes take no argument for (a LayerNorm
epsilon other than theirs, ViT's fixed sin-cos table): an export that would not reproduce the model is refused.
timm rebuilds the result with `timm.create_model("local-dir:DIR", pretrained=True)`.
"""

from __future__ import annotations

from vitlab.errors import ConfigError
from vitlab.weights.hf import require

# The model kinds (vitlab.export.model_kind) timm has, as users know them
TIMM_FAMILIES = {
    "vit": "ViT/DeiT",
    "hybrid": "hybrid ResNet+ViT",
    "swin": "Swin",
    "convnext": "ConvNeXt",
    "resnet": "ResNet",
    "mixer": "MLP-Mixer",
}

# Registered variants timm has no entry point for (vitlab's small configs for digits and CIFAR): written as their
# family's base architecture, which the sizes in model_args turn into this model. tests/test_export.py checks the list
# against timm's registry.
NOT_IN_TIMM = frozenset(
    {
        "vit_micro_patch2_8",
        "vit_micro_patch4_8",
        "vit_micro_patch4_16",
        "vit_mini_patch4_32",
        "deit_micro_distilled_patch4_8",
        "swin_micro_patch4_window4_32",
        "convnext_micro_32",
        "mixer_micro_patch4_32",  # no timm Mixer has its sizes: not exportable
    }
)
_RESNET_BLOCKS = {"resnet18": "basic", "resnet34": "basic", "resnet50": "bottleneck", "resnet101": "bottleneck"}


def _eps(have: float, timm_eps: float, family: str, field: str) -> None:
    require(
        have == timm_eps,
        f"timm's {family} LayerNorms use eps {timm_eps:g} and take no argument to change it; this model has "
        f"{field}={have:g} (from a transformers checkpoint?): export it with --format hf instead",
    )


def _vit(cfg: dict) -> tuple[str, dict]:
    require(
        cfg["pos_embed"] == "learned",
        f"timm's ViT has a learned position table or none; this model has pos_embed={cfg['pos_embed']!r}",
    )
    _eps(cfg["norm_eps"], 1e-6, "ViT", "norm_eps")
    args = dict(
        img_size=cfg["img_size"],
        patch_size=cfg["patch_size"],
        in_chans=cfg["in_chans"],
        embed_dim=cfg["embed_dim"],
        depth=cfg["depth"],
        num_heads=cfg["num_heads"],
        mlp_ratio=cfg["mlp_ratio"],
        qkv_bias=cfg["qkv_bias"],
        class_token=cfg["class_token"],
        global_pool=cfg["global_pool"],
        fc_norm=cfg["fc_norm"],
    )
    return ("deit_base_distilled_patch16_224" if cfg["distilled"] else "vit_base_patch16_224"), args


def _hybrid(cfg: dict) -> tuple[str, dict]:
    _eps(cfg["norm_eps"], 1e-6, "ViT", "norm_eps")
    # no patch_size: timm's hybrid embeds each cell of the backbone's map (its patch size is 1)
    keys = ("img_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias")
    return "vit_base_r50_s16_224", {k: cfg[k] for k in keys}


def _swin(cfg: dict) -> tuple[str, dict]:
    _eps(cfg["norm_eps"], 1e-5, "Swin", "norm_eps")
    keys = ("img_size", "patch_size", "in_chans", "embed_dim", "depths", "num_heads", "window_size", "mlp_ratio")
    return "swin_tiny_patch4_window7_224", {**{k: cfg[k] for k in keys}, "qkv_bias": cfg["qkv_bias"]}


def _convnext(cfg: dict) -> tuple[str, dict]:
    _eps(cfg["head_norm_eps"], 1e-6, "ConvNeXt", "head_norm_eps")
    require(
        cfg["patch_size"] != 2,
        "timm's ConvNeXt downsamples once more in its first stage after a 2x2 stem (to keep a /32 network); this "
        "model (patch_size=2) does not",
    )
    ls = cfg["layer_scale_init"]
    args = dict(
        in_chans=cfg["in_chans"],
        depths=cfg["depths"],
        dims=cfg["dims"],
        patch_size=cfg["patch_size"],
        ls_init_value=ls if ls > 0 else None,  # None: no layer-scale parameters, as ours at 0
    )
    return "convnext_tiny", args


def _resnet(cfg: dict) -> tuple[str, dict]:
    require(  # timm's stem_width sizes its deep stems only; the plain 7x7 stem has 64 channels
        cfg["stem_width"] == 64,
        f"timm's ResNet stem has 64 channels; this model has stem_width={cfg['stem_width']}",
    )
    args = dict(layers=cfg["layers"], channels=cfg["widths"], in_chans=cfg["in_chans"])
    return {"basic": "resnet18", "bottleneck": "resnet50"}[cfg["block"]], args


# timm's Mixer entry points fix these three (their keyword arguments cannot override them): one per size
_MIXERS = {"mixer_b16_224": (16, 12, 768), "mixer_l16_224": (16, 24, 1024), "mixer_b32_224": (32, 12, 768)}


def _mixer(cfg: dict) -> tuple[str, dict]:
    _eps(cfg["norm_eps"], 1e-6, "MLP-Mixer", "norm_eps")
    D = cfg["embed_dim"]
    sizes = (cfg["patch_size"], cfg["depth"], D)
    arch = next((name for name, fixed in _MIXERS.items() if fixed == sizes), None)
    require(
        arch is not None,
        "timm's MLP-Mixer entry points fix patch_size, depth and embed_dim ("
        + ", ".join(f"{n}: {'/'.join(map(str, v))}" for n, v in _MIXERS.items())
        + f"); this model has {'/'.join(map(str, sizes))}",
    )
    ratios = (cfg["tokens_mlp_dim"] / D, cfg["channels_mlp_dim"] / D)
    require(  # timm sizes the two MLPs as int(ratio * embed_dim)
        (int(ratios[0] * D), int(ratios[1] * D)) == (cfg["tokens_mlp_dim"], cfg["channels_mlp_dim"]),
        f"timm's MLP-Mixer cannot express tokens_mlp_dim={cfg['tokens_mlp_dim']}, "
        f"channels_mlp_dim={cfg['channels_mlp_dim']} as ratios of embed_dim={D}",
    )
    return arch, dict(img_size=cfg["img_size"], in_chans=cfg["in_chans"], mlp_ratio=ratios)


_ARGS = {"vit": _vit, "hybrid": _hybrid, "swin": _swin, "convnext": _convnext, "resnet": _resnet, "mixer": _mixer}


def timm_architecture(kind: str, name: str, cfg: dict) -> tuple[str, dict]:
    """(timm architecture, model_args) that rebuild model `name` of `kind` with config fields `cfg` in timm.

    The architecture is the registered name where timm has it and its entry point builds the same class (a ViT
    name for a ViT, a ResNet-50 name for bottleneck blocks, the Mixer of these sizes); else the family's base,
    which model_args resize. Training-only settings (dropout, stochastic depth) are left to timm.create_model's
    caller.
    """
    if kind not in _ARGS:
        raise ConfigError(f"timm has no {kind} models")
    base, args = _ARGS[kind](cfg)
    same_class = {
        "vit": ("distilled" in name) == cfg.get("distilled"),
        "resnet": _RESNET_BLOCKS.get(name) == cfg.get("block"),
        "mixer": name == base,
    }.get(kind, True)
    return (name if name not in NOT_IN_TIMM and same_class else base), args


def timm_hub_config(kind: str, name: str, cfg: dict, pretrained_cfg: dict, num_features: int) -> dict:
    """config.json of timm's hub layout: architecture, num_classes, model_args, pretrained_cfg, class names."""
    arch, args = timm_architecture(kind, name, cfg)
    out = {
        "architecture": arch,
        "num_classes": cfg["num_classes"],
        "num_features": num_features,
        "model_args": args,
        "pretrained_cfg": {**pretrained_cfg, "architecture": arch, "num_classes": cfg["num_classes"]},
    }
    if cfg["labels"]:
        out["label_names"] = list(cfg["labels"])
    return out
