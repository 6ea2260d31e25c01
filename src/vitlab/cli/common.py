"""Pieces several sub-commands share."""

from __future__ import annotations

from torch import nn

from vitlab.errors import CheckpointError, ConfigError
from vitlab.factory import create_model, load_checkpoint
from vitlab.weights import checkpoint_model_name


def add_checkpoint_args(p, device: bool = True) -> None:
    p.add_argument(
        "--checkpoint", required=True,
        help="vitlab run directory or checkpoint, or a transformers directory; any other format with --model",
    )  # fmt: skip
    p.add_argument("--model", default=None, help="architecture, when --checkpoint does not name one (a timm file)")
    if device:
        p.add_argument("--device", default="auto", help="auto | cpu | cuda")


def load_model(checkpoint: str, model: str | None) -> nn.Module:
    """The model `--checkpoint` holds: named by `--model`, else by the checkpoint itself (vitlab or transformers)."""
    if model is not None:
        return create_model(model, pretrained=checkpoint)
    if checkpoint_model_name(checkpoint) is None:
        raise ConfigError(
            f"--checkpoint {checkpoint} does not say which architecture it holds (a timm or bare state dict); "
            "name it with --model"
        )
    return load_checkpoint(checkpoint)


def checkpoint_task(checkpoint: str) -> str | None:
    """The task a vitlab checkpoint was trained for (from its metadata), or None when it does not say."""
    import json
    from pathlib import Path

    from vitlab.weights import CHECKPOINT_FILE
    from vitlab.weights.io import read_metadata

    path = Path(checkpoint)
    file = path / CHECKPOINT_FILE if path.is_dir() else path
    if not file.is_file():
        return None  # not a vitlab file or run: loading it reports what it is
    try:
        extra = json.loads(read_metadata(file).get("extra", "{}"))
    except (CheckpointError, json.JSONDecodeError):  # a corrupt file: loading it reports the error properly
        return None
    return extra.get("task") if isinstance(extra, dict) else None


def run_task_config(checkpoint: str, task):
    """The task config a run directory was trained with (its config.json), so eval and zeroshot see the same data
    sizes and tokenizer; the task's defaults for a bare checkpoint file, another task's run, or a config that does
    not parse (loading the checkpoint reports real problems)."""
    import json
    from pathlib import Path

    from vitlab.engine.trainer import config_from_json

    cfg = Path(checkpoint) / "config.json"
    if not cfg.is_file():
        return task.config_cls()
    try:
        saved = config_from_json(json.loads(cfg.read_text(encoding="utf-8")), str(cfg))
    except (CheckpointError, json.JSONDecodeError, UnicodeDecodeError, OSError):
        return task.config_cls()
    return saved.task_cfg if isinstance(saved.task_cfg, task.config_cls) else task.config_cls()
