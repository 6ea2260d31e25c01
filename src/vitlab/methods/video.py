"""Video classification: cross-entropy (label smoothing) on a clip's logits, the model reading `ClipBatch.clips`."""

from __future__ import annotations

from torch import nn

from vitlab.data.batches import ClipBatch
from vitlab.losses import cross_entropy
from vitlab.methods.base import Method, StepOutput


class VideoSupervised(Method):
    loss_weights = {"ce": 1.0}

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def step(self, model: nn.Module, batch: ClipBatch) -> StepOutput:
        logits = model(batch.clips)  # (B, K) from (B, T, C, H, W)
        ce = cross_entropy(logits=logits, target=batch.labels, label_smoothing=self.label_smoothing)
        return StepOutput({"ce": ce}, {"logits": logits})
