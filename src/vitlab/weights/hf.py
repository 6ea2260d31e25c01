"""Hugging Face transformers checkpoints: what a converter is, and the renaming helpers the converters share.

The converters live beside this file, one module per family; `vitlab.weights.catalog` keys them by `model_type`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vitlab.errors import CheckpointError


@dataclass(frozen=True)
class HfConverter:
    family: str  # vitlab family the weights load into
    marker: str  # a key suffix only this family's state dicts have
    convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]  # HF names -> vitlab names
    arch: Callable[[dict, dict[str, torch.Tensor]], dict]  # config.json (+ converted state) -> vitlab config fields
    model_for: Callable[[dict], tuple[str, dict]]  # config.json -> (registered model name, config overrides)


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
