"""Multi-label classification: mean average precision (scikit-learn's AP per label), F1 and exact-match accuracy."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitlab.data.batches import ImageBatch
from vitlab.engine.evaluators.base import Evaluator


@dataclass
class MultiLabelResult:
    loss: float  # binary cross-entropy, mean over samples and labels
    mean_ap: float  # mean over labels with at least one positive of the average precision
    f1: float  # micro F1 of the predictions sigmoid > threshold
    exact: float  # share of samples whose predicted label set is exactly right
    per_class_ap: list[float]  # nan where a label has no positive sample
    count: int

    @property
    def metrics(self) -> dict[str, float]:
        return {"loss": self.loss, "map": self.mean_ap, "f1": self.f1, "exact": self.exact}

    def details(self) -> dict:
        return {**self.metrics, "per_class_ap": self.per_class_ap}


class MultiLabelEvaluator(Evaluator):
    primary = "map"
    metric_labels = {"map": "mean average precision", "f1": "micro F1", "exact": "exact-match accuracy",
                     "loss": "binary cross-entropy"}  # fmt: skip

    def __init__(self, num_classes: int, threshold: float = 0.5) -> None:
        self.num_classes, self.threshold = num_classes, threshold
        self.reset()

    def reset(self) -> None:
        self.logits: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def update(self, model: nn.Module, batch: ImageBatch) -> None:
        self.logits.append(model(batch.images).float().cpu())
        self.labels.append(batch.labels.float().cpu())

    def compute(self) -> MultiLabelResult:
        from sklearn.metrics import average_precision_score, f1_score

        if not self.logits:
            raise ValueError("evaluation set is empty")
        logits, labels = torch.cat(self.logits), torch.cat(self.labels)  # (N, K)
        scores, truth = logits.sigmoid().numpy(), labels.numpy().astype(bool)
        pred = scores > self.threshold
        per_class = [
            float(average_precision_score(truth[:, k], scores[:, k])) if truth[:, k].any() else math.nan
            for k in range(self.num_classes)
        ]
        known = [ap for ap in per_class if not math.isnan(ap)]
        return MultiLabelResult(
            loss=F.binary_cross_entropy_with_logits(logits, labels).item(),
            mean_ap=float(np.mean(known)) if known else math.nan,
            f1=float(f1_score(truth, pred, average="micro", zero_division=0)),
            exact=float((pred == truth).all(axis=1).mean()),
            per_class_ap=per_class,
            count=len(labels),
        )

    def batch_stats(self, outputs: dict[str, torch.Tensor], batch: ImageBatch) -> dict[str, float]:
        pred = outputs["logits"].detach().float().sigmoid() > self.threshold
        return {"exact": (pred == batch.labels.bool()).all(dim=1).sum().item()}
