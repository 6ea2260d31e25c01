"""Exponential moving average of weights (Polyak averaging; timm's ModelEmaV2 behaviour)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, m in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            if e.is_floating_point():
                e.lerp_(m.detach(), 1.0 - self.decay)
            else:
                e.copy_(m)
