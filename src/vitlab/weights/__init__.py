"""Checkpoint loading and saving.

`read_pretrained` finds what a path holds — a vitlab checkpoint (safetensors with vitlab metadata), a run
directory, a Hugging Face transformers directory (`config.json` + weights from `save_pretrained`), a timm state
dict, or `hf-hub:org/name` — and converts it to vitlab's parameter names plus the architecture settings it implies.
`load_pretrained_into` then fits it to the model: position embeddings resampled, a head of another size re-initialised
with a warning, anything else that does not fit reported key by key.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vitlab.errors import CheckpointError
from vitlab.weights import hf
from vitlab.weights.io import read_tensors, write_tensors

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT_TAG = "vitlab"


@dataclass
class Pretrained:
    state: dict[str, torch.Tensor]  # vitlab parameter names
    arch: dict = field(default_factory=dict)  # config fields implied by the checkpoint (applied before overrides)
    source: str = ""  # path or hub id, for messages
    fmt: str = ""  # "vitlab", "timm", "hf"


# ----- vitlab's own format -----------------------------------------------------------------------------------------
def save_checkpoint(
    model: nn.Module, path: str | Path, extra: dict | None = None, state_dict: dict | None = None
) -> Path:
    """Write the model's weights and config to one safetensors file (atomically). Returns the path.

    state_dict: the weights to write instead of `model.state_dict()` (gathered from the ranks of a sharded model).
    """
    path = Path(path)
    if path.is_dir() or path.suffix != ".safetensors":
        path = path / CHECKPOINT_FILE
    meta = {
        "format": FORMAT_TAG,
        "model": getattr(model, "model_name", type(model).__name__),
        "config": json.dumps(dataclasses.asdict(model.cfg)),
    }
    if extra:
        meta["extra"] = json.dumps(extra)
    write_tensors(path, model.state_dict() if state_dict is None else state_dict, meta)
    return path


def load_checkpoint(path: str | Path, **overrides) -> nn.Module:
    """Rebuild a model from a vitlab checkpoint file or run directory (name and config come from the file)."""
    from vitlab.registry import create_model

    file = _vitlab_file(Path(path))
    _, meta = read_tensors(file)
    if meta.get("format") != FORMAT_TAG:
        raise CheckpointError(f"{file} is not a vitlab checkpoint (no vitlab metadata); use create_model(name, ...)")
    return create_model(meta["model"], pretrained=file, **overrides)


def checkpoint_model_name(path: str | Path) -> str | None:
    """The registered model name stored in a vitlab checkpoint, or None for other formats."""
    try:
        file = _vitlab_file(Path(path))
        return read_tensors(file)[1].get("model")
    except CheckpointError:
        return None


def _vitlab_file(path: Path) -> Path:
    if path.is_dir():
        if (path / CHECKPOINT_FILE).is_file():
            return path / CHECKPOINT_FILE
        raise CheckpointError(f"{path} has no {CHECKPOINT_FILE}")
    return path


# ----- reading any supported format ------------------------------------------------------------------------------
def read_pretrained(src: str | Path, entry) -> Pretrained:
    src_str = str(src)
    if src_str.startswith("hf-hub:"):
        return _read_hf_dir(_hub_download(src_str[len("hf-hub:") :]), entry, source=src_str)
    path = Path(src_str).expanduser()
    if not path.exists():
        raise CheckpointError(f"pretrained checkpoint {path} does not exist")
    if path.is_dir():
        if (path / CHECKPOINT_FILE).is_file():
            path = path / CHECKPOINT_FILE
        elif (path / "config.json").is_file():
            return _read_hf_dir(path, entry, source=src_str)
        else:
            raise CheckpointError(
                f"{path} is neither a vitlab run ({CHECKPOINT_FILE}) nor a transformers directory (config.json)"
            )
    state, meta = read_tensors(path)
    if meta.get("format") == FORMAT_TAG:
        arch = json.loads(meta.get("config", "{}"))
        return Pretrained(state, _fit_arch(arch, entry, path), str(path), "vitlab")
    conv = hf.find_by_keys(state)
    if conv is not None:
        _check_family(conv, entry, path)
        return Pretrained(conv.convert(state), {}, str(path), "hf")
    return Pretrained(state, {}, str(path), "timm")  # timm's names are vitlab's names


def _fit_arch(arch: dict, entry, path) -> dict:
    if entry.config_cls is None:
        return {}
    known = {f.name for f in dataclasses.fields(entry.config_cls)}
    unknown = sorted(set(arch) - known)
    if unknown:
        raise CheckpointError(f"{path}: config keys {', '.join(unknown)} do not belong to model {entry.name!r}")
    return arch


def _read_hf_dir(path: Path, entry, source: str) -> Pretrained:
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {config_file}: {e}") from None
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            state, _ = read_tensors(path / name)
            break
    else:
        raise CheckpointError(f"{path} has config.json but no model.safetensors or pytorch_model.bin")
    model_type = config.get("model_type")
    conv = hf.find_by_model_type(model_type)
    if conv is None:
        raise CheckpointError(f"{config_file}: model_type={model_type!r} is not a format vitlab reads")
    _check_family(conv, entry, config_file)
    state = conv.convert(state)
    return Pretrained(state, conv.arch(config, state), source, "hf")


def _check_family(conv: hf.HfConverter, entry, where) -> None:
    if conv.family != entry.family:
        raise CheckpointError(
            f"{where}: a transformers {conv.family} checkpoint cannot be loaded into {entry.name!r} ({entry.family})"
        )


def _hub_download(repo_id: str) -> Path:
    """Fetch config + weights of a hub repository (uses the local cache; honours the hub's own HF_HUB_OFFLINE)."""
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError:
        raise CheckpointError(
            "hf-hub: loading needs the huggingface_hub package (pip install huggingface_hub)"
        ) from None
    offline = constants.HF_HUB_OFFLINE  # as huggingface_hub parsed it ("1", "true", "yes", ...): one reading of it
    try:
        return Path(
            snapshot_download(
                repo_id,
                allow_patterns=["config.json", "model.safetensors", "pytorch_model.bin"],
                local_files_only=offline,
            )
        )
    except Exception as e:  # the hub client raises many types (network, auth, missing repo)
        raise CheckpointError(f"hf-hub:{repo_id}: cannot get the checkpoint ({type(e).__name__}: {e})") from None


# ----- fitting a state dict to a model -----------------------------------------------------------------------------
def load_pretrained_into(model: nn.Module, ckpt: Pretrained) -> None:
    state = dict(ckpt.state)
    if hasattr(model, "adapt_state_dict"):
        state = model.adapt_state_dict(state)
    own = model.state_dict()
    heads = tuple(f"{h}." for h in getattr(model, "get_classifier_names", lambda: [])())

    def is_head(k: str) -> bool:
        return k.startswith(heads) if heads else False

    # A head of another size is expected when fine-tuning; any other difference is an error.
    reset = sorted(k for k in state if is_head(k) and (k not in own or own[k].shape != state[k].shape))
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape and k not in reset
    ]
    missing = sorted(k for k in own if k not in state and not (reset and is_head(k)))
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
    if reset:
        log.warning(
            "%s: classifier %s does not fit this model's %d classes; it is re-initialised (train it before use)",
            ckpt.source,
            ", ".join(reset),
            getattr(model, "num_classes", -1),
        )
        for k in reset:
            del state[k]
    model.load_state_dict(state, strict=False)
