"""Video classification is judged as image classification is: top-1 / top-5, per-class accuracy, confusion matrix."""

from __future__ import annotations

import torch

from vitlab.data.batches import ClipBatch
from vitlab.engine.evaluators.classification import ClassificationEvaluator


class VideoClassificationEvaluator(ClassificationEvaluator):
    """`ClassificationEvaluator` on `ClipBatch.clips`."""

    def inputs(self, batch: ClipBatch) -> torch.Tensor:
        return batch.clips
