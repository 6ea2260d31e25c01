"""Plain supervised classification."""

from __future__ import annotations

import torch
from torch import nn

from vitlab.losses import cross_entropy


class Supervised:
    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def __call__(
        self, model: nn.Module, images: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits used for accuracy)."""
        logits = model(images)
        return cross_entropy(logits=logits, target=target, label_smoothing=self.label_smoothing), logits
