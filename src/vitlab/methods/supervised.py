"""Plain supervised classification: cross-entropy on labels (label smoothing), or on mixup/cutmix soft targets."""

from __future__ import annotations

import numpy as np
from torch import nn

from vitlab.data.batches import ImageBatch
from vitlab.data.mixup import mix_batch
from vitlab.losses import cross_entropy
from vitlab.methods.base import Method, StepOutput


class Supervised(Method):
    loss_weights = {"ce": 1.0}

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, mixup: float = 0.0, cutmix: float = 0.0) -> None:
        self.num_classes = num_classes
        self.label_smoothing, self.mixup, self.cutmix = label_smoothing, mixup, cutmix

    def augment(self, batch: ImageBatch, rng: np.random.Generator) -> ImageBatch:
        if self.mixup <= 0 and self.cutmix <= 0:
            return batch
        images, targets = mix_batch(
            batch.images, batch.labels, self.num_classes, self.mixup, self.cutmix, self.label_smoothing, rng
        )
        return ImageBatch(images, batch.labels, targets)

    def loss_target(self, batch: ImageBatch):
        """Soft targets where mixup made them, else the labels."""
        return batch.labels if batch.targets is None else batch.targets

    def step(self, model: nn.Module, batch: ImageBatch) -> StepOutput:
        logits = model(batch.images)
        ce = cross_entropy(logits=logits, target=self.loss_target(batch), label_smoothing=self.label_smoothing)
        return StepOutput({"ce": ce}, {"logits": logits})
