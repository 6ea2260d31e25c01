"""Language-driven segmentation (LSeg): per-pixel cross-entropy over the training label set's text embeddings.

The label set is tokenised once (the task's class names, "background" first); the text tower is frozen by the task,
as LSeg freezes CLIP's text encoder, so its embeddings move only through the image side and the temperature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.data.batches import SegmentationBatch
from vitlab.methods.base import Method, StepOutput


class SegmentForward(nn.Module):
    """`model.segment(images, label_ids)` as a forward, so DDP (which syncs through forward) can wrap it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, label_ids: torch.Tensor) -> torch.Tensor:
        return self.model.segment(images, label_ids)


class LanguageDrivenSegmentation(Method):
    """`loss_ce`: mean cross-entropy over labelled pixels (-1 ignored); outputs the logits (B, N, H, W)."""

    loss_weights = {"loss_ce": 1.0}

    def __init__(self, label_ids: torch.Tensor) -> None:
        self.label_ids = label_ids  # (N, T) token ids of the training labels

    def train_module(self, model: nn.Module) -> nn.Module:
        return SegmentForward(model)

    def step(self, model: nn.Module, batch: SegmentationBatch) -> StepOutput:
        fwd = model if isinstance(getattr(model, "module", model), SegmentForward) else SegmentForward(model)
        logits = fwd(batch.images, self.label_ids.to(batch.images.device))  # (B, N, H, W)
        loss = F.cross_entropy(logits, batch.masks, ignore_index=-1)
        return StepOutput({"loss_ce": loss}, {"logits": logits.detach()})
