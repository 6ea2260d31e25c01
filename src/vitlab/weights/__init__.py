"""Checkpoint formats: what a path holds, read into vitlab's parameter names and the architecture it describes.

`read_pretrained` finds what a path holds — a vitlab checkpoint (safetensors with vitlab metadata), a run
directory, a Hugging Face transformers directory (`config.json` + weights from `save_pretrained`), a timm state
dict, or `hf-hub:org/name` — and converts it to vitlab's parameter names, plus the config fields and, where the
checkpoint says it, the registered model name it implies. Nothing here knows a model class or the registry:
`vitlab.factory` builds the model and fits the weights to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vitlab.errors import CheckpointError
from vitlab.weights.catalog import find_by_keys, find_by_model_type
from vitlab.weights.dino import DINO_MODEL_NAME, dino_encoder
from vitlab.weights.hf import HfConverter
from vitlab.weights.io import read_metadata, read_tensors, write_tensors

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT_TAG = "vitlab"
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HF_PREPROCESSOR_FILE = "preprocessor_config.json"  # the image processor's settings, beside a hub model's config


@dataclass
class Pretrained:
    state: dict[str, torch.Tensor]  # vitlab parameter names
    arch: dict = field(default_factory=dict)  # config fields implied by the checkpoint (applied before overrides)
    source: str = ""  # path or hub id, for messages
    fmt: str = ""  # "vitlab", "timm", "hf"
    family: str = ""  # the vitlab family a transformers checkpoint belongs to ("" when the format does not say)
    model: str | None = None  # the registered name the checkpoint describes; None: not self-describing (timm)
    overrides: dict = field(default_factory=dict)  # what differs from `model`'s registered config (HF: sizes)


# ----- vitlab's own format -----------------------------------------------------------------------------------------
def write_checkpoint(
    path: str | Path, state: dict[str, torch.Tensor], model_name: str, config: dict, extra: dict | None = None
) -> Path:
    """One safetensors file (written atomically) holding the weights, the registered name and the config fields.

    A directory or a path without the .safetensors suffix gets `checkpoint.safetensors` inside it. Returns the file.
    """
    path = Path(path)
    if path.is_dir() or path.suffix != ".safetensors":
        path = path / CHECKPOINT_FILE
    meta = {"format": FORMAT_TAG, "model": model_name, "config": json.dumps(config)}
    if extra:
        meta["extra"] = json.dumps(extra)
    write_tensors(path, state, meta)
    return path


def checkpoint_model_name(src: str | Path) -> str | None:
    """The registered model name a self-describing checkpoint (vitlab file or run, transformers directory) names.

    None for formats that do not say (a timm or bare transformers state dict). Reads metadata or config.json only.
    """
    src_str = str(src)
    if src_str.startswith("hf-hub:"):
        return read_pretrained(src_str).model
    path = _existing(src_str)
    if path.is_dir():
        if (path / CHECKPOINT_FILE).is_file():
            path = path / CHECKPOINT_FILE
        else:
            config = _read_hf_config(_hf_dir(path))
            conv = _hf_converter(config, path / "config.json")
            return _from_config(conv, path, lambda: conv.model_for(config))[0]
    meta = read_metadata(path)
    if meta.get("format") == FORMAT_TAG and meta.get("model") == DINO_MODEL_NAME:
        return read_pretrained(path).model  # the encoder it reads as
    return meta.get("model") if meta.get("format") == FORMAT_TAG else None


# ----- reading any supported format ------------------------------------------------------------------------------
def read_pretrained(src: str | Path) -> Pretrained:
    """Weights (vitlab names) and what the checkpoint says about its architecture, from any supported format."""
    src_str = str(src)
    if src_str.startswith("hf-hub:"):
        return _read_hf_dir(_hub_download(src_str[len("hf-hub:") :]), source=src_str)
    path = _existing(src_str)
    if path.is_dir():
        if not (path / CHECKPOINT_FILE).is_file():
            return _read_hf_dir(_hf_dir(path), source=src_str)
        path = path / CHECKPOINT_FILE
    state, meta = read_tensors(path)
    if meta.get("format") == FORMAT_TAG:
        try:
            arch = json.loads(meta.get("config", "{}"))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: the vitlab metadata's config is not JSON ({e})") from None
        if meta.get("model") == DINO_MODEL_NAME:  # a DINO run: its teacher encoder
            state, arch, name = dino_encoder(state, arch, str(path))
            return Pretrained(state, arch, str(path), "vitlab", model=name)
        return Pretrained(state, arch, str(path), "vitlab", model=meta.get("model"))
    conv = find_by_keys(state)
    if conv is not None:  # a transformers state dict without its config.json: the weights, but no sizes
        return Pretrained(conv.convert(state), {}, str(path), "hf", family=conv.family)
    return Pretrained(state, {}, str(path), "timm")  # timm's names are vitlab's names


def _existing(src: str) -> Path:
    path = Path(src).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} is missing (the path does not exist)")
    return path


def _hf_dir(path: Path) -> Path:
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"{path} is neither a vitlab run ({CHECKPOINT_FILE}) nor a transformers directory (config.json)"
        )
    return path


def _read_hf_config(path: Path) -> dict:
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {config_file}: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object, found {type(config).__name__}")
    return config


def _hf_converter(config: dict, config_file: Path) -> HfConverter:
    model_type = config.get("model_type")
    if model_type is None and "model" in config and "epochs" in config:  # a vitlab run's own config.json
        raise CheckpointError(
            f"{config_file.parent} is a vitlab run directory without {CHECKPOINT_FILE}: no epoch has completed, "
            "or the file was removed"
        )
    conv = find_by_model_type(model_type)
    if conv is None:
        raise CheckpointError(f"{config_file}: model_type={model_type!r} is not a format vitlab reads")
    return conv


def _read_hf_dir(path: Path, source: str) -> Pretrained:
    config = _read_hf_config(path)
    conv = _hf_converter(config, path / "config.json")
    weights = next((path / n for n in HF_WEIGHT_FILES if (path / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{path} has config.json but no {' or '.join(HF_WEIGHT_FILES)}")
    state = conv.convert(read_tensors(weights)[0])
    model, overrides = _from_config(conv, path, lambda: conv.model_for(config))
    arch = _from_config(conv, path, lambda: conv.arch(config, state))
    arch.update(_normalisation(path, arch.get("in_chans", 3)))
    return Pretrained(state, arch, source, "hf", family=conv.family, model=model, overrides=overrides)


def _normalisation(path: Path, in_chans: int) -> dict:
    """mean/std of the directory's image processor, if it has one: the statistics the weights were trained with."""
    file = path / HF_PREPROCESSOR_FILE
    if not file.is_file():
        return {}
    try:
        proc = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {file}: {e}") from None
    mean, std = proc.get("image_mean"), proc.get("image_std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == in_chans):
        return {}  # absent, or for another channel count: keep the registered variant's
    return {"mean": tuple(mean), "std": tuple(std)}


def _from_config(conv: HfConverter, path: Path, read):
    """`read()`, with a config.json that lacks an entry the converter needs reported as such."""
    try:
        return read()
    except KeyError as e:
        raise CheckpointError(f"{path / 'config.json'}: no {e} entry, which a {conv.family} config has") from None


def _hub_download(repo_id: str) -> Path:
    """Fetch config + weights of a hub repository (uses the local cache; honours the hub's own HF_HUB_OFFLINE)."""
    try:
        from huggingface_hub import constants, snapshot_download  # optional: only hf-hub: paths need it
    except ImportError:
        raise CheckpointError(
            "hf-hub: loading needs the huggingface_hub package (pip install huggingface_hub)"
        ) from None
    offline = constants.HF_HUB_OFFLINE  # as huggingface_hub parsed it ("1", "true", "yes", ...)
    files = ["config.json", HF_PREPROCESSOR_FILE, *HF_WEIGHT_FILES]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=files, local_files_only=offline))
    except Exception as e:  # the hub client raises many types (network, auth, missing repo)
        raise CheckpointError(f"hf-hub:{repo_id}: cannot get the checkpoint ({type(e).__name__}: {e})") from None
