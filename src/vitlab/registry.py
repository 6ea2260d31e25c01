"""Model registry: entries, `@register_model` / `register_variants`, `list_models`, `get_entry` (timm's names).

A leaf: it imports nothing of vitlab but its errors. Model modules register their variants when imported;
`vitlab.factory` (which imports `vitlab.models`) builds models from the entries and loads checkpoints into them.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from vitlab.errors import UnknownModelError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    factory: Callable[..., nn.Module]
    config_cls: type | None  # the config dataclass the factory's keyword arguments fill
    pretrained_cfg: dict = field(default_factory=dict)  # timm pretrained_cfg values the model cannot derive itself
    # "classifier": timm's whole contract (forward -> logits, features_only, ...), which the registry-wide tests
    # check; "detector" (DETR) and other multi-output models keep only their own API.
    kind: str = "classifier"


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str | None = None,
    *,
    family: str = "",
    config_cls: type | None = None,
    pretrained_cfg: dict | None = None,
    kind: str = "classifier",
):
    """Decorator: register a factory `fn(**overrides) -> nn.Module` under `name` (default: the function's name)."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is registered twice")
        _REGISTRY[key] = ModelEntry(key, family, fn, config_cls, dict(pretrained_cfg or {}), kind)
        return fn

    return wrap


def register_variants(
    variants: dict[str, dict],
    *,
    family: str,
    config_cls: type,
    model_cls: type,
    pretrained_cfgs: dict[str, dict] | None = None,
    kind: str = "classifier",
) -> None:
    """Register `name -> model_cls(config_cls(**defaults, **overrides))` for each entry of `variants`.

    pretrained_cfgs: per-name timm pretrained_cfg values the model cannot derive from its config (crop_pct).
    """
    for name, defaults in variants.items():

        def factory(_defaults=defaults, **overrides) -> nn.Module:
            return model_cls(config_cls(**{**_defaults, **overrides}))

        cfg = (pretrained_cfgs or {}).get(name)
        register_model(name, family=family, config_cls=config_cls, pretrained_cfg=cfg, kind=kind)(factory)


def list_models(pattern: str = "*", kind: str | None = None) -> list[str]:
    """Registered names matching a shell-style pattern, sorted (`import vitlab` has registered every model);
    `kind` ("classifier", "detector") keeps that kind only."""
    return sorted(n for n, e in _REGISTRY.items() if fnmatch.fnmatch(n, pattern) and (kind is None or e.kind == kind))


def get_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `vitlab models` lists them"
        raise UnknownModelError(f"unknown model {name!r}{hint}")
    return _REGISTRY[name]
