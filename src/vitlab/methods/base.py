"""What every training method shares: the step's output, the method's interface, and the one weighted sum.

A method turns a batch into *unweighted* losses by name plus the outputs metrics need; its `loss_weights` say how
the losses combine, and `weighted_loss` is the one place they are combined (as DETR's `weight_dict`), so a report can
show every term and a recipe can re-weight one without touching the method.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn


@dataclass
class StepOutput:
    losses: dict[str, torch.Tensor]  # scalar losses by name, before weighting
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)  # what metrics read, e.g. "logits" (B, K)


class Method:
    """Base class of the training methods. Subclasses set `loss_weights` and implement `step`."""

    loss_weights: Mapping[str, float] = {}

    def train_module(self, model: nn.Module) -> nn.Module:
        """The module `step` calls in training (DDP wraps this one, so every forward it runs syncs gradients)."""
        return model

    def start_epoch(self, epoch: int, epochs: int, steps_per_epoch: int) -> None:
        """Called before each training epoch (1-based) with the optimizer steps it takes: per-step schedules that
        live in the method (DINO's teacher momentum and temperature) derive their position from it, so a resumed run
        continues them exactly."""

    def before_optimizer_step(self, model: nn.Module) -> None:
        """Called after the gradients are complete (clipped, all-reduced) and before the optimizer applies them."""

    def after_optimizer_step(self, model: nn.Module) -> None:
        """Called after each optimizer step (DINO's EMA teacher follows the student here)."""

    def augment(self, batch, rng: np.random.Generator):
        """Batch-level augmentation applied before `step` in training (mixup, cutmix); the identity by default."""
        return batch

    def step(self, model: nn.Module, batch) -> StepOutput:
        raise NotImplementedError


def weighted_loss(losses: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """sum_k weights[k] * losses[k]; every loss needs a weight (a forgotten term is an error, not silently dropped)."""
    missing = sorted(set(losses) - set(weights))
    if missing:
        raise ValueError(f"no weight for loss(es) {', '.join(missing)}; weights given: {', '.join(sorted(weights))}")
    terms = [weights[k] * v for k, v in losses.items() if weights[k] != 0]
    if not terms:
        raise ValueError(f"every loss weight is zero: {dict(weights)}")
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total
