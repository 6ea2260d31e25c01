"""Exporting a model for other runtimes and libraries: ONNX, TorchScript, timm's and transformers' directory layouts.

`export_model(model, fmt, out)` writes `out` whole or not at all: everything goes to a temporary path beside it that
is renamed into place at the end, and an `out` that exists is refused, never replaced. What a format cannot express
(a family that transformers or timm does not have, a setting their classes take no argument for) is a ConfigError
that names it.

- onnx: `torch.onnx.export` (the dynamo exporter) with the batch axis dynamic; input `images`, output `logits`.
- torchscript: `torch.jit.trace`, checked against the eager model at two other batch sizes before it is saved.
- timm: OUT/model.safetensors + OUT/config.json (architecture, model_args, pretrained_cfg), which
  `timm.create_model("local-dir:OUT", pretrained=True)` rebuilds; vitlab's parameter names are timm's.
- hf: a transformers `save_pretrained` directory (config.json, model.safetensors, preprocessor_config.json) for
  ViT, DeiT, Swin, ConvNeXt, CvT, ResNet and MAE (ViTMAEForPreTraining), through the converters in `vitlab.weights`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from vitlab.errors import ConfigError
from vitlab.models.convnext import ConvNeXt
from vitlab.models.cpvt import CPVT
from vitlab.models.cvt import CvT
from vitlab.models.hybrid import HybridViT
from vitlab.models.mae import MaskedAutoencoder
from vitlab.models.mixer import MlpMixer
from vitlab.models.resnet import AlexNet, LeNet5, ResNet
from vitlab.models.swin import SwinTransformer
from vitlab.models.vit import VisionTransformer
from vitlab.weights.catalog import find_by_family
from vitlab.weights.hf import image_processor_config
from vitlab.weights.io import write_tensors
from vitlab.weights.timm import TIMM_FAMILIES, timm_hub_config

FORMATS = ("onnx", "torchscript", "timm", "hf")

# Exact classes: CPVT and the hybrid are ViT subclasses, and neither transformers nor timm builds the first.
_KINDS: dict[type, str] = {
    VisionTransformer: "vit",
    CPVT: "cpvt",
    HybridViT: "hybrid",
    SwinTransformer: "swin",
    ConvNeXt: "convnext",
    CvT: "cvt",
    ResNet: "resnet",
    MlpMixer: "mixer",
    LeNet5: "classic_cnn",
    AlexNet: "classic_cnn",
    MaskedAutoencoder: "mae",
}
_KIND_NAMES = {"cpvt": "CPVT", "cvt": "CvT", "classic_cnn": "LeNet-5/AlexNet", **TIMM_FAMILIES}
HF_FAMILIES = {"vit": "ViT/DeiT", "swin": "Swin", "convnext": "ConvNeXt", "cvt": "CvT", "resnet": "ResNet",
               "mae": "ViTMAE"}  # fmt: skip
_ONNX_LIMIT = 2**31  # protobuf's limit on one file: larger models would need external data files
_TRACE_TOL = 1e-4


def model_kind(model: nn.Module) -> str | None:
    """The architecture `model` is, as the export formats see it ("vit", "cpvt", "swin", ...); None if unknown."""
    return _KINDS.get(type(model))


def check_out(out: str | Path) -> Path:
    """`out` as a Path, or a ConfigError if anything (a file, a directory, a dangling link) is already there."""
    out = Path(out).expanduser()
    if os.path.lexists(out):
        raise ConfigError(f"--out {out} already exists; exporting never replaces anything: choose a new path")
    return out


def export_model(model: nn.Module, fmt: str, out: str | Path) -> Path:
    """Write `model` to `out` in format `fmt` (one of FORMATS). Returns `out`.

    onnx and torchscript write one file, timm and hf a directory. The model is exported in eval mode (its own mode
    is restored afterwards), on the device and in the dtype it is on.
    """
    if fmt not in _WRITERS:
        raise ConfigError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    out = check_out(out)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _write_beside(out, lambda path: _WRITERS[fmt](model, path))
    finally:
        model.train(was_training)
    return out


def _write_beside(out: Path, write: Callable[[Path], None]) -> None:
    """`write(path)` into a temporary folder beside `out`, then rename it into place: a crash leaves no half-written
    `out`, and the rename refuses (a link for files, a non-empty target for folders) an `out` created meanwhile."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        target = tmp / out.name
        write(target)
        check_out(out)
        if target.is_dir():
            os.rename(target, out)
        else:
            _move_file(target, out)
    except OSError as e:
        if os.path.lexists(out):
            raise ConfigError(f"--out {out} appeared while exporting; it was left as it is") from None
        raise ConfigError(f"cannot write {out}: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_file(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # unlike rename, never replaces a file that appeared since the check
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links
        os.rename(src, dst)


def _describe(model: nn.Module) -> str:
    kind = model_kind(model)
    name = getattr(model, "model_name", type(model).__name__)
    return f"{name} ({_KIND_NAMES.get(kind, type(model).__name__)})"


def _example(model: nn.Module, batch: int) -> torch.Tensor:
    cfg = model.cfg
    ref = next(model.parameters())
    return torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, device=ref.device, dtype=ref.dtype)


# ----- the formats ---------------------------------------------------------------------------------------------------
def _onnx(model: nn.Module, path: Path) -> None:
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"--format onnx needs the {' and '.join(missing)} package(s): pip install {' '.join(missing)}"
        )
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if size >= _ONNX_LIMIT:
        raise ConfigError(f"{_describe(model)} has {size / 2**30:.1f} GiB of weights; one ONNX file holds under 2 GiB")
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.onnx.export(
            model, (_example(model, 2),), dynamo=True, dynamic_shapes=({0: batch},),
            input_names=["images"], output_names=["logits"], verbose=False,
        )  # fmt: skip
    except Exception as e:  # the exporter raises many types; the user gets one line naming the model
        first = (str(e).strip().splitlines() or [""])[0]
        raise ConfigError(f"torch.onnx.export failed for {_describe(model)}: {type(e).__name__}: {first}") from None
    program.save(str(path))


def _torchscript(model: nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        # Python-int shape arithmetic (Swin's padding and window mask) warns; the check below is what decides.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # check_trace=False: the tracer's own re-trace flags the constants of Swin's window mask, built afresh each
        # call; comparing outputs at other batch sizes checks more (a batch size frozen into the graph fails it)
        traced = torch.jit.trace(model, _example(model, 2), check_trace=False)
    for batch in (1, 3):
        x = _example(model, batch)
        want, got = model(x), traced(x)
        err = (got - want).abs().max().item()
        if got.shape != want.shape or err > _TRACE_TOL * max(1.0, want.abs().max().item()):
            raise ConfigError(
                f"torch.jit.trace does not reproduce {_describe(model)} at batch size {batch} "
                f"(output {tuple(got.shape)} vs {tuple(want.shape)}, largest difference {err:.3g})"
            )
    torch.jit.save(traced, str(path))


def _timm(model: nn.Module, path: Path) -> None:
    kind = model_kind(model)
    if kind not in TIMM_FAMILIES:
        raise ConfigError(
            f"--format timm: timm has no counterpart of {_describe(model)}; it takes "
            f"{', '.join(TIMM_FAMILIES.values())}"
        )
    name = getattr(model, "model_name", "")
    config = timm_hub_config(kind, name, _config(model), model.pretrained_cfg, model.num_features)
    path.mkdir()
    write_tensors(path / "model.safetensors", model.state_dict())
    _write_json(path / "config.json", config)


def _hf(model: nn.Module, path: Path) -> None:
    kind = model_kind(model)
    conv = find_by_family(kind) if kind in HF_FAMILIES else None
    if conv is None:
        raise ConfigError(
            f"--format hf: transformers has no counterpart of {_describe(model)}; it takes "
            f"{', '.join(HF_FAMILIES.values())}"
        )
    cfg = _config(model)
    config, state = conv.to_hf(cfg, model.state_dict())
    path.mkdir()
    write_tensors(path / "model.safetensors", state, {"format": "pt"})  # the metadata transformers writes
    _write_json(path / "config.json", config)
    _write_json(path / "preprocessor_config.json", image_processor_config(cfg))


_WRITERS: dict[str, Callable[[nn.Module, Path], None]] = {
    "onnx": _onnx,
    "torchscript": _torchscript,
    "timm": _timm,
    "hf": _hf,
}


def _config(model: nn.Module) -> dict:
    return dataclasses.asdict(model.cfg)


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")
