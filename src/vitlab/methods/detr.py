"""DETR's set prediction: the model's queries matched to the targets (Hungarian), then the set losses by name."""

from __future__ import annotations

from torch import nn

from vitlab.data.batches import DetectionBatch
from vitlab.losses.detection import SetCriterion
from vitlab.methods.base import Method, StepOutput


class SetPrediction(Method):
    """Unweighted `loss_ce`, `loss_bbox`, `loss_giou` (+ `_i` per auxiliary decoder layer) and the logged-only
    `cardinality_error`; `loss_weights` are the criterion's (CE 1, L1 5, GIoU 2), named for every term the model's
    decoder depth produces, so the engine's one weighted sum sees them all."""

    def __init__(self, criterion: SetCriterion) -> None:
        self.criterion = criterion
        self.loss_weights: dict[str, float] = {}

    def step(self, model: nn.Module, batch: DetectionBatch) -> StepOutput:
        out = model(batch.images, batch.pixel_mask)
        losses = self.criterion(out.logits, out.pred_boxes, batch.labels, batch.boxes, out.aux)
        self.loss_weights = self.criterion.weights_by_name(losses)
        return StepOutput(losses, {"logits": out.logits, "pred_boxes": out.pred_boxes})
