"""Semantic segmentation: per-class IoU from one confusion matrix over every test pixel, and their mean (mIoU).

IoU_k = TP_k / (TP_k + FP_k + FN_k) summed over the whole test set (not averaged per image), as in PASCAL VOC and
ADE20K; a class with no pixel in either the truth or the prediction has no IoU (nan) and is left out of the mean.
Pixels labelled -1 are ignored. Where some classes were held out of training (language-driven segmentation), the
mean is also given over the seen and the held-out classes apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from vitlab.data.batches import SegmentationBatch
from vitlab.engine.evaluators.base import Evaluator

__all__ = ["SegmentationEvaluator", "SegmentationResult", "confusion", "iou_from_confusion"]


def confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) int64 counts, rows the true class and columns the predicted one; target -1 is ignored."""
    keep = target >= 0
    idx = target[keep] * num_classes + pred[keep]
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_from_confusion(conf: torch.Tensor) -> torch.Tensor:
    """(K,) float IoU per class; nan where the class is absent from both truth and prediction."""
    tp = conf.diag().double()
    union = conf.sum(0).double() + conf.sum(1).double() - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def _nanmean(x: torch.Tensor) -> float:
    x = x[~x.isnan()]
    return x.mean().item() if len(x) else float("nan")


@dataclass
class SegmentationResult:
    classes: list[str]
    held_out: list[str]
    iou: list[float]  # per class
    pixel_acc: float
    count: int  # images

    @property
    def metrics(self) -> dict[str, float]:
        iou = torch.tensor(self.iou)
        m = {"miou": _nanmean(iou), "pixel_acc": self.pixel_acc}
        if self.held_out:
            held = torch.tensor([c in self.held_out for c in self.classes])
            m.update(miou_seen=_nanmean(iou[~held]), miou_held_out=_nanmean(iou[held]))
        return m

    def details(self) -> dict:
        return {**self.metrics, "classes": self.classes, "held_out": self.held_out, "per_class_iou": self.iou}


class SegmentationEvaluator(Evaluator):
    """Feeds `model.segment(images, label_ids)` the test label set (tokenised once) and accumulates a confusion."""

    primary = "miou"
    metric_labels = {
        "miou": "mean IoU",
        "pixel_acc": "pixel accuracy",
        "miou_seen": "mean IoU, classes seen in training",
        "miou_held_out": "mean IoU, classes held out of training",
    }

    def __init__(self, classes: Sequence[str], label_ids: torch.Tensor, held_out: Sequence[str] = ()) -> None:
        self.classes, self.label_ids = list(classes), label_ids
        self.held_out = [c for c in held_out if c in self.classes]
        self.reset()

    def reset(self) -> None:
        self.conf = torch.zeros(len(self.classes), len(self.classes), dtype=torch.long)
        self.count = 0

    def must_be_finite(self) -> set[str]:
        return {"miou", "pixel_acc"}

    def update(self, model: nn.Module, batch: SegmentationBatch) -> None:
        ids = self.label_ids.to(batch.images.device)
        pred = model.segment(batch.images, ids).argmax(1)  # (B, H, W)
        self.conf += confusion(pred.cpu(), batch.masks.cpu(), len(self.classes))
        self.count += len(batch)

    def compute(self) -> SegmentationResult:
        if self.count == 0:
            raise ValueError("evaluation set is empty")
        total = self.conf.sum().item()
        acc = self.conf.diag().sum().item() / total if total else float("nan")
        return SegmentationResult(self.classes, self.held_out, iou_from_confusion(self.conf).tolist(), acc, self.count)

    def batch_stats(self, outputs: dict[str, torch.Tensor], batch: SegmentationBatch) -> dict[str, float]:
        """Pixel accuracy of the training batch (per image, summed: the engine divides by the sample count)."""
        pred = outputs["logits"].argmax(1)
        keep = batch.masks >= 0
        right = ((pred == batch.masks) & keep).flatten(1).sum(1).float()
        return {"pixel_acc": (right / keep.flatten(1).sum(1).clamp(min=1)).sum().item()}
