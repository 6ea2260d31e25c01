"""Single-label classification: loss, top-1 / top-5, per-class accuracy and the confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.data.batches import ImageBatch
from vitlab.engine.evaluators.base import Evaluator


@dataclass
class ClassificationResult:
    loss: float
    top1: float
    top5: float
    per_class: list[float]  # accuracy per class (nan where the class has no sample)
    confusion: list[list[int]]  # confusion[true][predicted]
    count: int

    @property
    def metrics(self) -> dict[str, float]:
        return {"loss": self.loss, "acc": self.top1, "top5": self.top5}

    def details(self) -> dict:
        return {"loss": self.loss, "top1": self.top1, "top5": self.top5, "per_class": self.per_class}


class ClassificationEvaluator(Evaluator):
    primary = "acc"
    metric_labels = {"acc": "top-1 accuracy", "top5": "top-5 accuracy", "loss": "cross-entropy"}

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        K = self.num_classes
        self.confusion = torch.zeros(K, K, dtype=torch.long)
        self.loss_sum, self.correct5, self.n = 0.0, 0, 0

    def inputs(self, batch) -> torch.Tensor:
        """What the model reads from a batch: images here, clips for video classification."""
        return batch.images

    def update(self, model: nn.Module, batch: ImageBatch) -> None:
        K, labels = self.num_classes, batch.labels
        logits = model(self.inputs(batch)).float()
        self.loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        self.correct5 += (logits.topk(min(5, K), dim=-1).indices == labels[:, None]).any(dim=-1).sum().item()
        pred = logits.argmax(dim=-1)
        self.confusion += torch.bincount(labels.cpu() * K + pred.cpu(), minlength=K * K).view(K, K)
        self.n += labels.numel()

    def compute(self) -> ClassificationResult:
        if self.n == 0:
            raise ValueError("evaluation set is empty")
        support = self.confusion.sum(dim=1)
        per_class = (self.confusion.diag().float() / support.clamp(min=1)).tolist()
        per_class = [a if s > 0 else float("nan") for a, s in zip(per_class, support.tolist(), strict=True)]
        return ClassificationResult(
            loss=self.loss_sum / self.n,
            top1=self.confusion.diag().sum().item() / self.n,
            top5=self.correct5 / self.n,
            per_class=per_class,
            confusion=self.confusion.tolist(),
            count=self.n,
        )

    def batch_stats(self, outputs: dict[str, torch.Tensor], batch: ImageBatch) -> dict[str, float]:
        return {"acc": (outputs["logits"].argmax(-1) == batch.labels).sum().item()}
