"""Named outputs of models that return more than one tensor."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DistilledLogits:
    cls: torch.Tensor  # (B, num_classes) from the class token, trained on the labels
    dist: torch.Tensor  # (B, num_classes) from the distillation token, trained on the teacher

    def mean(self) -> torch.Tensor:
        return (self.cls + self.dist) / 2
