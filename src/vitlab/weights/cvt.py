"""Hugging Face transformers CvT checkpoints <-> vitlab (official-repository-named) state dicts and configs."""

from __future__ import annotations

import torch

from vitlab.errors import CheckpointError
from vitlab.weights.hf import HfConverter, head_fields, hf_config, pick_variant, rename, rename_to_hf, require

_L = r"^encoder\.stages\.(\d+)\.layers\.(\d+)\."
_A = _L + r"attention\.attention\."
_RULES = [
    (r"^encoder\.stages\.(\d+)\.embedding\.convolution_embeddings\.projection\.", r"stages.\1.patch_embed.proj."),
    (r"^encoder\.stages\.(\d+)\.embedding\.convolution_embeddings\.normalization\.", r"stages.\1.patch_embed.norm."),
    (r"^encoder\.stages\.(\d+)\.cls_token$", r"stages.\1.cls_token"),
    (_A + r"convolution_projection_(query|key|value)\.convolution_projection\.convolution\.",
     r"stages.\1.blocks.\2.attn.conv_proj_@\3.conv."),
    (_A + r"convolution_projection_(query|key|value)\.convolution_projection\.normalization\.",
     r"stages.\1.blocks.\2.attn.conv_proj_@\3.bn."),
    (_A + r"projection_(query|key|value)\.", r"stages.\1.blocks.\2.attn.proj_@\3."),
    (_L + r"attention\.output\.dense\.", r"stages.\1.blocks.\2.attn.proj."),
    (_L + r"layernorm_before\.", r"stages.\1.blocks.\2.norm1."),
    (_L + r"layernorm_after\.", r"stages.\1.blocks.\2.norm2."),
    (_L + r"intermediate\.dense\.", r"stages.\1.blocks.\2.mlp.fc1."),
    (_L + r"output\.dense\.", r"stages.\1.blocks.\2.mlp.fc2."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
]  # fmt: skip


def convert_cvt(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = rename(state, ("cvt.",), _RULES)
    short = {"@query": "q", "@key": "k", "@value": "v"}
    for long, s in short.items():
        out = {k.replace(long, s): v for k, v in out.items()}
    return out


def cvt_fields(config: dict) -> dict:
    """The CvTConfig fields a transformers config.json fixes, weights aside."""
    n = len(config["depth"])
    if list(config.get("cls_token", [False] * (n - 1) + [True])) != [False] * (n - 1) + [True]:
        raise CheckpointError("config.json: CvT with a class token outside the last stage is not supported")
    if set(config.get("qkv_projection_method", ["dw_bn"])) != {"dw_bn"}:
        raise CheckpointError("config.json: only the 'dw_bn' (depthwise conv + BN) CvT projection is supported")
    if set(config.get("stride_q", [1])) != {1} or len(set(config.get("stride_kv", [2]))) != 1:
        raise CheckpointError("config.json: CvT needs stride_q = 1 and one stride_kv for all stages")
    return dict(
        img_size=config.get("image_size", 224),
        in_chans=config.get("num_channels", 3),
        embed_dims=tuple(config["embed_dim"]),
        depths=tuple(config["depth"]),
        num_heads=tuple(config["num_heads"]),
        patch_sizes=tuple(config["patch_sizes"]),
        patch_strides=tuple(config["patch_stride"]),
        patch_paddings=tuple(config["patch_padding"]),
        kernel_qkv=config["kernel_qkv"][0],
        stride_kv=config["stride_kv"][0],
        mlp_ratio=config["mlp_ratio"][0],
        qkv_bias=config["qkv_bias"][0],
    )


def cvt_arch(config: dict, state: dict[str, torch.Tensor]) -> dict:
    return dict(cvt_fields(config), **head_fields(config, state, "head.weight"))


# ----- registered variants a config.json can name (models/cvt.py; tests/test_factory.py checks they agree) -----------
_CVT = dict(
    img_size=224, in_chans=3, embed_dims=(64, 192, 384), num_heads=(1, 3, 6), patch_sizes=(7, 3, 3),
    patch_strides=(4, 2, 2), patch_paddings=(2, 1, 1), kernel_qkv=3, stride_kv=2, mlp_ratio=4.0, qkv_bias=True,
)  # fmt: skip
CVT_VARIANTS = {  # the base first: it wins ties
    "cvt_13_224": dict(_CVT, depths=(1, 2, 10)),
    "cvt_21_224": dict(_CVT, depths=(1, 4, 16)),
    "cvt_13_384": dict(_CVT, depths=(1, 2, 10), img_size=384),
    "cvt_micro_32": dict(
        _CVT,
        img_size=32,
        in_chans=1,
        embed_dims=(32, 64, 128),
        depths=(1, 1, 2),
        num_heads=(1, 2, 4),
        patch_sizes=(3, 3, 3),
        patch_strides=(2, 2, 2),
        patch_paddings=(1, 1, 1),
    ),  # fmt: skip
}


def cvt_model_for(config: dict) -> tuple[str, dict]:
    """config.json -> (registered name, overrides), e.g. microsoft/cvt-13's -> `cvt_13_224`."""
    return pick_variant(cvt_fields(config), CVT_VARIANTS)


# ----- vitlab -> transformers ---------------------------------------------------------------------------------------
_V = r"^stages\.(\d+)\.blocks\.(\d+)\."
_H = r"encoder.stages.\1.layers.\2."
_QKV = {"q": "query", "k": "key", "v": "value"}
_TO_HF = [
    (r"^stages\.(\d+)\.patch_embed\.proj\.", r"encoder.stages.\1.embedding.convolution_embeddings.projection."),
    (r"^stages\.(\d+)\.patch_embed\.norm\.", r"encoder.stages.\1.embedding.convolution_embeddings.normalization."),
    (r"^stages\.(\d+)\.cls_token$", r"encoder.stages.\1.cls_token"),
    (_V + r"attn\.conv_proj_([qkv])\.(conv|bn)\.",
     lambda m: f"encoder.stages.{m[1]}.layers.{m[2]}.attention.attention.convolution_projection_{_QKV[m[3]]}."
     f"convolution_projection.{'convolution' if m[4] == 'conv' else 'normalization'}."),
    (_V + r"attn\.proj_([qkv])\.",
     lambda m: f"encoder.stages.{m[1]}.layers.{m[2]}.attention.attention.projection_{_QKV[m[3]]}."),
    (_V + r"attn\.proj\.", _H + "attention.output.dense."),
    (_V + r"norm1\.", _H + "layernorm_before."),
    (_V + r"norm2\.", _H + "layernorm_after."),
    (_V + r"mlp\.fc1\.", _H + "intermediate.dense."),
    (_V + r"mlp\.fc2\.", _H + "output.dense."),
    (r"^norm\.", "layernorm."),
    (r"^head\.", "classifier."),
]  # fmt: skip


def cvt_to_hf(cfg: dict, state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """CvTConfig fields + weights -> a CvtForImageClassification (its settings are per-stage lists)."""
    depths, n = list(cfg["depths"]), len(cfg["depths"])
    require(
        all(d > i for i, d in enumerate(depths)),
        f"transformers' CvT cannot build depths={tuple(depths)}: its stage i needs more than i blocks (it indexes "
        "the stage's drop-path rates by the stage number)",
    )
    require(cfg["norm_eps"] == 1e-5, f"transformers' CvT LayerNorms use eps 1e-5; this model has {cfg['norm_eps']}")
    k = cfg["kernel_qkv"]
    fields = dict(
        image_size=cfg["img_size"],  # not a CvtConfig field; kept in config.json for vitlab to read back
        num_channels=cfg["in_chans"],
        patch_sizes=list(cfg["patch_sizes"]),
        patch_stride=list(cfg["patch_strides"]),
        patch_padding=list(cfg["patch_paddings"]),
        embed_dim=list(cfg["embed_dims"]),
        num_heads=list(cfg["num_heads"]),
        depth=depths,
        mlp_ratio=[cfg["mlp_ratio"]] * n,
        qkv_bias=[cfg["qkv_bias"]] * n,
        cls_token=[False] * (n - 1) + [True],
        qkv_projection_method=["dw_bn"] * n,
        kernel_qkv=[k] * n,
        padding_kv=[k // 2] * n,
        stride_kv=[cfg["stride_kv"]] * n,
        padding_q=[k // 2] * n,
        stride_q=[1] * n,
        drop_path_rate=[0.0] * (n - 1) + [cfg["drop_path_rate"]],  # the last stage only, as ours
    )
    state = rename_to_hf(state, _TO_HF, "cvt.")
    return hf_config("cvt", "CvtForImageClassification", fields, cfg), state


HF = HfConverter(
    family="cvt",
    marker="convolution_embeddings.projection.weight",
    convert=convert_cvt,
    arch=cvt_arch,
    model_for=cvt_model_for,
    to_hf=cvt_to_hf,
)
