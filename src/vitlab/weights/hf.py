"""Hugging Face transformers checkpoints: what a converter is, and the renaming helpers the converters share.

The converters live beside this file, one module per family; `vitlab.weights.catalog` keys them by `model_type`.
Each reads a transformers checkpoint into vitlab's names and writes one back (`to_hf`, for `vitlab export`): the
layout `save_pretrained` writes (`encoder.layer.N.attention.attention.query`), which transformers 4 and 5 both load.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vitlab.errors import CheckpointError, ConfigError


@dataclass(frozen=True)
class HfConverter:
    family: str  # vitlab family the weights load into
    marker: str | tuple[str, ...]  # a key suffix only this family's state dicts have (one of several formats')
    convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]  # HF names -> vitlab names
    arch: Callable[[dict, dict[str, torch.Tensor]], dict]  # config.json (+ converted state) -> vitlab config fields
    model_for: Callable[[dict], tuple[str, dict]]  # config.json -> (registered model name, config overrides)
    # (vitlab config fields, vitlab state dict) -> (config.json, transformers state dict); ConfigError for what the
    # transformers class cannot express
    to_hf: Callable[[dict, dict[str, torch.Tensor]], tuple[dict, dict[str, torch.Tensor]]]

    def matches(self, state: dict) -> bool:
        """Whether the state dict holds this family's marker key (under any prefix)."""
        markers = (self.marker,) if isinstance(self.marker, str) else self.marker
        return any(k.endswith(m) for k in state for m in markers)


def rename(state: dict[str, torch.Tensor], prefixes: tuple[str, ...], rules: list[tuple[str, str]]) -> dict:
    """Strip the model prefix, drop poolers, and apply the first matching (regex, replacement) rule to each key.

    Keys no rule matches are kept as they are, so the loader reports them as unexpected.
    """
    out = {}
    for key, value in state.items():
        for p in prefixes:
            if key.startswith(p):
                key = key[len(p) :]
                break
        if key.startswith("pooler."):  # *Model checkpoints' pooler is not part of a classifier
            continue
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, key)
            if n:
                key = new
                break
        out[key] = value
    return out


_QKV = re.compile(r"^(.*)\.__(query|key|value|q|k|v)__\.(\w+)$")
_QKV_ORDER = {"query": 0, "key": 1, "value": 2, "q": 0, "k": 1, "v": 2}


def fuse_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenate `X.__query__.P`, `X.__key__.P`, `X.__value__.P` (as renaming rules mark them) into `X.qkv.P`."""
    out: dict[str, torch.Tensor] = {}
    parts: dict[tuple[str, str], list] = {}
    for key, value in state.items():
        m = _QKV.match(key)
        if m:
            prefix, which, param = m.groups()
            parts.setdefault((prefix, param), [None, None, None])[_QKV_ORDER[which]] = value
        else:
            out[key] = value
    for (prefix, param), qkv in parts.items():
        if any(t is None for t in qkv):
            raise CheckpointError(f"{prefix}: incomplete query/key/value {param} tensors in the checkpoint")
        out[f"{prefix}.qkv.{param}"] = torch.cat(qkv, dim=0)
    return out


def head_fields(config: dict, state: dict[str, torch.Tensor], head_key: str) -> dict:
    """num_classes from the (converted) head weight, 0 without one, and the config's class names if they fit."""
    head = state.get(head_key)
    num_classes = head.shape[0] if head is not None else 0
    return {"num_classes": num_classes, "labels": labels_from_config(config, num_classes)}


def labels_from_config(config: dict, num_classes: int) -> list[str]:
    labels = config.get("id2label") or {}
    names = [labels[k] for k in sorted(labels, key=int)] if labels else []
    if names and names != [f"LABEL_{i}" for i in range(len(names))] and len(names) == num_classes:
        return names
    return []


_MISSING = object()


def pick_variant(fields: dict, variants: dict[str, dict], numerics: tuple[str, ...] = ()) -> tuple[str, dict]:
    """(registered name, config overrides) for the architecture `fields` that a config.json describes.

    `variants` maps registered names to the fields that define them; the first is the family's base, which wins ties.
    The variant whose fields all equal the config's is chosen; else the nearest (the fewest fields differ), with the
    config's values as overrides, so that a size no variant has still loads. `numerics` (epsilons, initial scales:
    they change outputs, not shapes) never decide the variant and are always overrides.
    """
    arch = {k: v for k, v in fields.items() if k not in numerics}

    def distance(name: str) -> int:
        want = variants[name]
        return sum(want.get(k, _MISSING) != v for k, v in arch.items()) + sum(k not in arch for k in want)

    name = min(variants, key=distance)  # min keeps the first of equals: the base
    overrides = {k: v for k, v in arch.items() if variants[name].get(k, _MISSING) != v}
    overrides.update({k: fields[k] for k in numerics if k in fields})
    return name, overrides


# ----- the other way: vitlab -> transformers (`vitlab export --format hf`) ----------------------------------------
_FUSED_QKV = re.compile(r"^(.*)\.qkv\.(weight|bias)$")


def split_qkv(state: dict[str, torch.Tensor], names: tuple[str, str, str]) -> dict[str, torch.Tensor]:
    """`X.qkv.P` -> `X.<names[0]>.P`, `X.<names[1]>.P`, `X.<names[2]>.P`: the inverse of `fuse_qkv`."""
    out = {}
    for key, value in state.items():
        m = _FUSED_QKV.match(key)
        if m is None:
            out[key] = value
            continue
        for name, part in zip(names, value.chunk(3, dim=0), strict=True):
            out[f"{m[1]}.{name}.{m[2]}"] = part.clone()  # its own storage: safetensors refuses shared tensors
    return out


def rename_to_hf(
    state: dict[str, torch.Tensor], rules: list, prefix: str, top_level: tuple[str, ...] = ("classifier.",)
) -> dict[str, torch.Tensor]:
    """vitlab names -> a transformers model's: the first matching (regex, replacement) rule renames each key, and
    `prefix` (the base model's attribute, `vit.`) goes before every result but the classifier's (`top_level`).

    A key no rule matches has no place in the transformers model: an error naming it, never a weight dropped.
    """
    out, unmatched = {}, []
    for key, value in state.items():
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new if new.startswith(top_level) else prefix + new] = value
                break
        else:
            unmatched.append(key)
    if unmatched:
        more = f" (+{len(unmatched) - 8} more)" if len(unmatched) > 8 else ""
        raise ConfigError(f"no transformers counterpart for the weights {', '.join(unmatched[:8])}{more}")
    return out


def hf_config(model_type: str, architecture: str, fields: dict, cfg: dict) -> dict:
    """A config.json: the family's fields, the class that loads it, and the class names (LABEL_i when unnamed)."""
    names = list(cfg["labels"]) or [f"LABEL_{i}" for i in range(cfg["num_classes"])]
    return {
        "model_type": model_type,
        "architectures": [architecture],
        **fields,
        "num_labels": len(names),
        "id2label": {str(i): n for i, n in enumerate(names)},
        "label2id": {n: i for i, n in enumerate(names)},
    }


def image_processor_config(cfg: dict) -> dict:
    """preprocessor_config.json: resize to the model's size, scale to [0, 1], normalise with the model's mean/std.

    A plain ViTImageProcessor for every family (it is what vitlab's eval transform does, less the centre crop);
    vitlab reads the mean and std back from it.
    """
    side = cfg["img_size"]
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": side, "width": side},
        "resample": 3,  # PIL bicubic, timm's and vitlab's interpolation
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(cfg["mean"]),
        "image_std": list(cfg["std"]),
    }


def require(condition: bool, message: str) -> None:
    """ConfigError(message) unless `condition`: the check that a format can express a model's setting."""
    if not condition:
        raise ConfigError(message)
