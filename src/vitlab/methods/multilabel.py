"""Multi-label classification: one independent sigmoid per label, binary cross-entropy (several labels per image)."""

from __future__ import annotations

from torch import nn

from vitlab.data.batches import ImageBatch
from vitlab.losses import multilabel_bce
from vitlab.methods.base import Method, StepOutput


class MultiLabel(Method):
    loss_weights = {"bce": 1.0}

    def step(self, model: nn.Module, batch: ImageBatch) -> StepOutput:
        logits = model(batch.images)  # (B, K): one logit per label
        return StepOutput({"bce": multilabel_bce(logits=logits, target=batch.labels)}, {"logits": logits})
