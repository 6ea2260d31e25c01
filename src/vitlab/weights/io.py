"""Reading and writing weight files safely: safetensors, or pickles loaded with `weights_only=True` only."""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from vitlab.errors import CheckpointError

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
ZIP_MAGIC, PICKLE_MAGIC = b"PK\x03\x04", b"\x80"  # how torch.save's files begin (zip; legacy: pickle protocol 2+)


def read_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, metadata) from a .safetensors file or a weights-only pickle. Never executes code."""
    path = _checkpoint_file(path)
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), "pt") as f:  # one open: header, metadata and tensors
                return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}  # noqa: SIM118 (safe_open is not a dict)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {path}: not a checkpoint (not a safetensors file: {e})") from None
    if path.suffix not in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"unsupported checkpoint file {path}: expected .safetensors or one of {', '.join(PICKLE_SUFFIXES)}"
        )
    with open(path, "rb") as f:
        head = f.read(9)
    if not head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):  # torch.save writes a zip; its legacy format, a pickle
        raise CheckpointError(f"{path} is not a checkpoint (not a PyTorch or safetensors file)")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it may not read: the error says more
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message advises re-running with weights_only=False, which would run the file's code: not quoted.
        detail = str(e).partition("WeightsUnpickler error:")[2].strip().split("\n")[0].strip()
        raise CheckpointError(
            f"refusing to load {path}: it holds pickled objects other than tensors, which could execute code"
            + (f" ({detail})" if detail else "")
            + "; re-save the weights alone (torch.save(model.state_dict(), ...) or safetensors) from a trusted copy"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().split(". ")[0] or type(e).__name__
        raise CheckpointError(f"cannot read {path}: a damaged or truncated PyTorch file ({first})") from None
    return _unwrap_state_dict(obj, path), {}


def read_metadata(path: str | Path) -> dict[str, str]:
    """A .safetensors file's metadata without reading its tensors; {} for pickles, which carry none."""
    path = _checkpoint_file(path)
    if path.suffix != ".safetensors":
        return {}
    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: not a checkpoint (not a safetensors file: {e})") from None


def _checkpoint_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} is missing (the path does not exist)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    return path


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    # Official repos wrap the weights: DeiT {"model": ...}, many trainers {"state_dict": ...}; DDP adds "module.".
    for key in ("model", "state_dict", "model_state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def atomic_write(path: str | Path, write) -> None:
    """Call `write(tmp_path)`, flush it to disk, then rename over `path`: a crash leaves the old file or the new one,
    never a torn one. The file gets the mode the umask gives new files (mkstemp's would be 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: str | Path) -> None:
    """Make renames in directory `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    data = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(data, tmp, metadata=metadata))
