"""A DINO run's checkpoint read as its teacher encoder: what fine-tuning, explaining and evaluating it load.

`vitlab train --task dino` saves the whole student/teacher pair (`vitlab.methods.dino.DinoModel`: the registered name
"dino", its config naming the encoder and the encoder's config, weights under `student_net.` / `teacher_net.`).
Everything but the run's own resume reads it as the teacher's encoder (the paper evaluates and draws the teacher):
the encoder's registered name, config and weights, as if saved on their own.
"""

from __future__ import annotations

import torch

from vitlab.errors import CheckpointError

DINO_MODEL_NAME = "dino"  # vitlab.methods.dino.DinoModel.model_name
ENCODERS = ("teacher", "student")


def dino_encoder(
    state: dict[str, torch.Tensor], arch: dict, source: str, which: str = "teacher"
) -> tuple[dict[str, torch.Tensor], dict, str]:
    """(encoder weights, encoder config fields, encoder name) of a DINO checkpoint's teacher (or student)."""
    if which not in ENCODERS:
        raise ValueError(f"which must be one of {ENCODERS}, got {which!r}")
    name, config = arch.get("encoder"), arch.get("encoder_config")
    if not isinstance(name, str) or not isinstance(config, dict):
        raise CheckpointError(f"{source}: a DINO checkpoint whose config does not name its encoder")
    prefix = f"{which}_net.backbone."
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        raise CheckpointError(f"{source}: a DINO checkpoint without {prefix}* weights")
    return weights, dict(config), name
