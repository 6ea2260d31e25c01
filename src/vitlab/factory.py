"""The model factory: `create_model`, `load_checkpoint`, `save_checkpoint` (timm's call signatures).

The one module that knows the registry, the models and the weight formats. It imports `vitlab.models`, so every
family is registered once `vitlab` is imported; it reads checkpoints with `vitlab.weights` (which knows no model),
builds the registered model the caller or the checkpoint names, and fits the weights to it: position tables
resampled, a classifier of another size or none at all (a headless checkpoint) replaced by the model's own new head
with a warning, anything else that does not fit reported key by key.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from torch import nn

import vitlab.models  # noqa: F401  (importing the families registers their variants)
from vitlab.errors import CheckpointError, ConfigError, UnknownModelError
from vitlab.models.features import FeatureNet
from vitlab.models.inflate import INFLATE_MODES, inflate_image_state, is_image_vit_state
from vitlab.models.mae import encoder_checkpoint_fields
from vitlab.registry import ModelEntry, get_entry
from vitlab.weights import Pretrained, read_pretrained, write_checkpoint

log = logging.getLogger(__name__)


def create_model(
    name: str,
    pretrained: bool | str | Path | None = None,
    num_classes: int | None = None,
    img_size: int | None = None,
    **overrides,
) -> nn.Module:
    """Build a registered model, optionally from a checkpoint.

    `pretrained` may be a vitlab run or checkpoint, a Hugging Face transformers directory (`save_pretrained`),
    a timm state dict (.safetensors/.pth/.bin) or `hf-hub:org/name`; False or None: random weights. As in timm,
    `pretrained=True, pretrained_cfg_overlay=dict(file=PATH)` names the file too. The checkpoint's architecture
    settings apply first, then `num_classes` / `img_size` / `overrides`: a different `img_size` resamples the
    position embedding; a different `num_classes`, or a checkpoint without a classifier, gives a new head (with a
    warning). A video model given an image ViT checkpoint is initialised from it (`vitlab.models.inflate`;
    `inflate="central"` or `"average"` for the tubelet filter). timm's `features_only`, `out_indices`, `feature_cls`
    and `feature_cfg` give a `FeatureNet`.
    """
    entry = get_entry(name)
    pretrained = _pretrained_source(name, pretrained, overrides.pop("pretrained_cfg_overlay", None))
    features = _pop_feature_args(overrides)
    inflate = overrides.pop("inflate", "central")  # video models from an image ViT: how its patch filter inflates
    user = _user_overrides(num_classes, img_size, overrides)
    if pretrained is None:
        model = build_model(entry, user)
    else:
        ckpt = read_pretrained(pretrained)
        if entry.kind == "video" and is_image_vit_state(ckpt.state):
            model = _inflated(entry, ckpt, user, inflate)
        else:
            model = _from_pretrained(entry, ckpt, user)
    return FeatureNet(model, **features) if features is not None else model


def _inflated(entry: ModelEntry, ckpt: Pretrained, user: dict, mode: str) -> nn.Module:
    """A video model initialised from an image ViT checkpoint (`vitlab.models.inflate`); its config is the video
    variant's with the caller's overrides, the image checkpoint's sizes must fit it."""
    if mode not in INFLATE_MODES:
        raise ConfigError(f"inflate={mode!r}: choose one of {', '.join(INFLATE_MODES)}")
    model = build_model(entry, user)
    model.load_state_dict(inflate_image_state(model, ckpt.state, mode))
    log.info("%s: image ViT weights inflated into %s (%s-frame patch filter)", ckpt.source, entry.name, mode)
    return model


def _pretrained_source(name: str, pretrained, overlay: dict | None) -> str | Path | None:
    """What `pretrained` (timm's bool, or a path) and timm's `pretrained_cfg_overlay` name: a source, or None."""
    file = (overlay or {}).get("file")
    unknown = sorted(set(overlay or {}) - {"file"})
    if unknown:
        raise ConfigError(f"pretrained_cfg_overlay: only 'file' is read, not {', '.join(unknown)}")
    if pretrained is False or pretrained is None:
        return None
    if pretrained is True:
        if file is None:
            raise ConfigError(
                f"{name}: vitlab downloads no weights; pass pretrained=PATH (a vitlab, timm or transformers "
                "checkpoint, or 'hf-hub:org/name'), or pretrained_cfg_overlay=dict(file=PATH)"
            )
        return file
    return pretrained


def _pop_feature_args(overrides: dict) -> dict | None:
    """timm's feature-extraction arguments (features_only, out_indices, feature_cls, feature_cfg), removed from
    `overrides`; None when features_only is not set (the other three then are errors)."""
    feature_cfg = dict(overrides.pop("feature_cfg", None) or {})
    for key in ("out_indices", "feature_cls"):
        if key in overrides:
            feature_cfg[key] = overrides.pop(key)
    if not overrides.pop("features_only", False):
        if feature_cfg:
            raise ConfigError(f"{', '.join(sorted(feature_cfg))} only apply with features_only=True")
        return None
    unknown = sorted(set(feature_cfg) - {"out_indices", "feature_cls", "norm", "output_fmt"})
    if unknown:
        raise ConfigError(f"feature_cfg: unknown key(s) {', '.join(unknown)}")
    return feature_cfg


def load_checkpoint(
    path: str | Path, num_classes: int | None = None, img_size: int | None = None, **overrides
) -> nn.Module:
    """Rebuild a model from a self-describing checkpoint, naming no architecture (as `from_pretrained` does).

    A vitlab checkpoint file or run directory names its model and config; a transformers directory (or
    `hf-hub:org/name`) describes its architecture in config.json, from which the matching registered variant is
    chosen (or the family's nearest one, with the config's sizes as overrides). A timm state dict does not say what
    it is: load it with `create_model(name, pretrained=path)`. Overrides apply as in `create_model`.
    """
    ckpt = read_pretrained(path)
    if ckpt.model is None:
        raise CheckpointError(
            f"{ckpt.source}: a {ckpt.fmt} state dict does not say which architecture it holds; "
            f"use create_model(NAME, pretrained={str(path)!r})"
        )
    if ckpt.fmt == "hf":
        log.info("%s: transformers checkpoint loaded as %s %s", ckpt.source, ckpt.model, ckpt.overrides or "")
    return _from_pretrained(get_entry(ckpt.model), ckpt, _user_overrides(num_classes, img_size, overrides))


def save_checkpoint(
    model: nn.Module, path: str | Path, extra: dict | None = None, state_dict: dict | None = None
) -> Path:
    """Write the model's weights, registered name and config to one safetensors file (atomically). Returns the path.

    state_dict: the weights to write instead of `model.state_dict()` (gathered from the ranks of a sharded model).
    """
    name = getattr(model, "model_name", type(model).__name__)
    state = model.state_dict() if state_dict is None else state_dict
    return write_checkpoint(path, state, name, dataclasses.asdict(model.cfg), extra)


def build_model(entry: ModelEntry, kwargs: dict) -> nn.Module:
    """`entry`'s factory called with `kwargs`, each checked against its config dataclass first."""
    if entry.config_cls is not None:
        allowed = {f.name for f in dataclasses.fields(entry.config_cls)}
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
    if entry.pretrained_cfg:
        model.pretrained_cfg_overlay = dict(entry.pretrained_cfg)
    return model


def _user_overrides(num_classes: int | None, img_size: int | None, overrides: dict) -> dict:
    user = dict(overrides)
    if num_classes is not None:
        user["num_classes"] = num_classes
    if img_size is not None:
        user["img_size"] = img_size
    return user


def _from_pretrained(entry: ModelEntry, ckpt: Pretrained, user: dict) -> nn.Module:
    ckpt = _encoder_of_pretraining(entry, ckpt)
    if ckpt.family and ckpt.family != entry.family:
        raise CheckpointError(
            f"{ckpt.source}: a transformers {ckpt.family} checkpoint cannot be loaded into {entry.name!r} "
            f"({entry.family})"
        )
    kwargs = {**_fit_arch(ckpt, entry), **user}
    if len(kwargs.get("labels", [])) not in (0, kwargs.get("num_classes", -1)):
        kwargs["labels"] = []  # a new head: the checkpoint's class names no longer apply
    # Sizes only, on the meta device: a config that does not fit the file's tensors (metadata claiming depth=48 beside
    # a few small tensors) is refused before its weights are allocated.
    with torch.device("meta"):
        probe = build_model(entry, kwargs)
    try:
        fit_state(probe, ckpt)
    except CheckpointError as e:
        implied = sum(v.numel() for v in probe.state_dict().values())
        held = sum(v.numel() for v in ckpt.state.values())
        raise CheckpointError(f"{e} (the config implies {implied:,} values, the file holds {held:,})") from None
    model = build_model(entry, kwargs)
    load_pretrained_into(model, ckpt)
    return model


# What a fine-tuned model does not take from a pre-training run's encoder: its training settings (MAE pre-trains
# without stochastic depth; fine-tuning uses the model's own, or --drop-path) and its (absent) classifier.
_NOT_FROM_ENCODER = ("drop_rate", "attn_drop_rate", "drop_path_rate", "num_classes", "labels", "global_pool", "fc_norm")


def _encoder_of_pretraining(entry: ModelEntry, ckpt: Pretrained) -> Pretrained:
    """A masked-autoencoder checkpoint loaded into a model of its encoder's family: the encoder's weights and
    config only (`vitlab train --pretrained MAE_RUN --model ENCODER` fine-tunes it as a classifier)."""
    if ckpt.model is None or entry.kind == "mae":
        return ckpt
    try:
        source = get_entry(ckpt.model)
    except UnknownModelError:
        return ckpt
    if source.kind != "mae":
        return ckpt
    name, fields = encoder_checkpoint_fields(ckpt.arch)
    encoder = get_entry(name)
    if encoder.family != entry.family:
        raise CheckpointError(
            f"{ckpt.source}: the {ckpt.model} checkpoint's encoder is {name} ({encoder.family}); it cannot be loaded "
            f"into {entry.name!r} ({entry.family}): use --model {name}"
        )
    with torch.device("meta"):  # the encoder's whole config (its variant's sizes + the run's overrides), no weights
        full = dataclasses.asdict(build_model(encoder, {**fields, "num_classes": 0}).cfg)
    arch = {k: v for k, v in full.items() if k not in _NOT_FROM_ENCODER}
    state = {k.removeprefix("encoder."): v for k, v in ckpt.state.items() if k.startswith("encoder.")}
    log.info("%s: the encoder (%s) of %s loaded", ckpt.source, name, ckpt.model)
    return dataclasses.replace(ckpt, state=state, arch=arch, family="", model=name, overrides={})


def _fit_arch(ckpt: Pretrained, entry: ModelEntry) -> dict:
    if entry.config_cls is None:
        return {}
    known = {f.name for f in dataclasses.fields(entry.config_cls)}
    unknown = sorted(set(ckpt.arch) - known)
    if unknown:
        raise CheckpointError(f"{ckpt.source}: config keys {', '.join(unknown)} do not belong to model {entry.name!r}")
    return ckpt.arch


# ----- fitting a state dict to a model -----------------------------------------------------------------------------
def load_pretrained_into(model: nn.Module, ckpt: Pretrained) -> None:
    """Copy the checkpoint's weights into `model`; only its classifier may differ from the model's.

    A classifier of another size (fine-tuning to new classes), or none at all (a headless checkpoint: timm's
    feature-extractor files, transformers' `ViTModel`), leaves the model's own freshly initialised head in place,
    with one warning, as timm does. Any other key missing, unexpected or of another shape is an error naming it.
    """
    state, reset, new = fit_state(model, ckpt)
    num_classes = getattr(model, "num_classes", -1)
    if reset:
        log.warning(
            "%s: classifier %s does not fit this model's %d classes; it is re-initialised (train it before use)",
            ckpt.source,
            ", ".join(reset),
            num_classes,
        )
        for k in reset:
            del state[k]
    if new:
        head = f"a new head for {num_classes} classes" if num_classes > 0 else "a new head"
        log.warning(
            "%s has no classifier (%s): %s is initialised (train it before use)", ckpt.source, ", ".join(new), head
        )
    model.load_state_dict(state, strict=False)


def fit_state(model: nn.Module, ckpt: Pretrained) -> tuple[dict, list[str], list[str]]:
    """(the checkpoint's state adapted to `model`, classifier keys to re-initialise, classifier keys it lacks), or a
    CheckpointError naming every other key that is missing, unexpected or of another shape. Reads shapes only."""
    state = dict(ckpt.state)
    if hasattr(model, "adapt_state_dict"):
        state = model.adapt_state_dict(state)
    own = model.state_dict()
    heads = [f"{h}." for h in getattr(model, "get_classifier_names", lambda: [])()]

    def head_of(k: str) -> str | None:
        return next((h for h in heads if k.startswith(h)), None)

    # A head of another size is expected when fine-tuning; a head the checkpoint lacks entirely, for a new task.
    reset = sorted(k for k in state if head_of(k) and (k not in own or own[k].shape != state[k].shape))
    absent = {h for h in heads if not any(k.startswith(h) for k in state)}
    new = sorted(k for k in own if head_of(k) in absent)
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape and k not in reset
    ]
    missing = sorted(k for k in own if k not in state and k not in new and not (reset and head_of(k)))
    unexpected = sorted(k for k in state if k not in own and k not in reset)
    if mismatched or missing or unexpected:
        parts = []
        for label, items in (
            ("shape mismatch", mismatched),
            ("missing keys", missing),
            ("unexpected keys", unexpected),
        ):
            if items:
                more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
                parts.append(f"{label} ({len(items)}): " + "; ".join(items[:8]) + more)
        name = getattr(model, "model_name", type(model).__name__)
        raise CheckpointError(f"{ckpt.source} ({ckpt.fmt} format) does not fit {name}: " + " | ".join(parts))
    return state, reset, new
