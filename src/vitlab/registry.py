"""Model registry: `@register_model`, `create_model`, `list_models` (timm's names and call signatures)."""

from __future__ import annotations

import difflib
import fnmatch
import logging
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from torch import nn

from vitlab.errors import ConfigError, UnknownModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    factory: Callable[..., nn.Module]
    config_cls: type | None  # the config dataclass the factory's keyword arguments fill


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str | None = None, *, family: str = "", config_cls: type | None = None):
    """Decorator: register a factory `fn(**overrides) -> nn.Module` under `name` (default: the function's name)."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is registered twice")
        _REGISTRY[key] = ModelEntry(key, family, fn, config_cls)
        return fn

    return wrap


def register_variants(variants: dict[str, dict], *, family: str, config_cls: type, model_cls: type) -> None:
    """Register `name -> model_cls(config_cls(**defaults, **overrides))` for each entry of `variants`."""
    for name, defaults in variants.items():

        def factory(_defaults=defaults, **overrides) -> nn.Module:
            return model_cls(config_cls(**{**_defaults, **overrides}))

        register_model(name, family=family, config_cls=config_cls)(factory)


def _ensure_models_imported() -> None:
    import vitlab.models  # noqa: F401  (registration happens on import, not at vitlab import time)


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern, sorted."""
    _ensure_models_imported()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_entry(name: str) -> ModelEntry:
    _ensure_models_imported()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `vitlab models` lists them"
        raise UnknownModelError(f"unknown model {name!r}{hint}")
    return _REGISTRY[name]


def create_model(
    name: str,
    pretrained: str | Path | None = None,
    num_classes: int | None = None,
    img_size: int | None = None,
    **overrides,
) -> nn.Module:
    """Build a registered model, optionally from a checkpoint.

    `pretrained` may be a vitlab run or checkpoint, a Hugging Face transformers directory (`save_pretrained`),
    a timm state dict (.safetensors/.pth/.bin) or `hf-hub:org/name`. The checkpoint's architecture settings
    apply first, then `num_classes` / `img_size` / `overrides`: a different `img_size` resamples the position
    embedding, a different `num_classes` re-initialises the head (with a warning).
    """
    entry = get_entry(name)
    user = dict(overrides)
    if num_classes is not None:
        user["num_classes"] = num_classes
    if img_size is not None:
        user["img_size"] = img_size
    if pretrained is None:
        return build_model(entry, user)

    from vitlab.weights import load_pretrained_into, read_pretrained

    ckpt = read_pretrained(pretrained, entry)
    kwargs = {**ckpt.arch, **user}
    if len(kwargs.get("labels", [])) not in (0, kwargs.get("num_classes", -1)):
        kwargs["labels"] = []  # a new head: the checkpoint's class names no longer apply
    model = build_model(entry, kwargs)
    load_pretrained_into(model, ckpt)
    return model


def build_model(entry: ModelEntry, kwargs: dict) -> nn.Module:
    if entry.config_cls is not None:
        allowed = {f.name for f in fields(entry.config_cls)}
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise ConfigError(
                f"{entry.name}: unknown argument(s) {', '.join(unknown)}; accepted: {', '.join(sorted(allowed))}"
            )
    try:
        model = entry.factory(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{entry.name}: {e}") from None
    model.model_name = entry.name
    return model
