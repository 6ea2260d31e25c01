"""DINO runs judged as the paper judges them: weighted k-NN on the teacher encoder's frozen features (sec. 4.1).

The k-NN classifier (`knn.knn_classify`): cosine similarity of L2-normalised features, the k = 20 nearest
training images vote with weights exp(sim / T), T = 0.07 (the DINO repository's `eval_knn`, after Wu et al. 2018).
Labels are used only here, never in training. The feature bank is the training split through the eval transform,
recomputed at each evaluation because the teacher changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from vitlab.data.multicrop import MultiCropBatch, MultiCropDataset, collate_multicrop
from vitlab.data.transforms import ImageTransform
from vitlab.engine.evaluators.base import Evaluator
from vitlab.engine.evaluators.knn import knn_classify
from vitlab.methods.dino import DinoModel


@dataclass
class DinoResult:
    knn_top1: float
    count: int

    @property
    def metrics(self) -> dict[str, float]:
        return {"knn_acc": self.knn_top1}

    def details(self) -> dict:
        return {"knn_top1": self.knn_top1, "count": self.count}


@torch.no_grad()
def encode(encoder: nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D), labels (N,)) of every first view in `loader`: the encoder's pooled pre-logits features."""
    device = next(encoder.parameters()).device
    feats, labels = [], []
    for batch in loader:
        x = batch.crops[0].to(device)
        feats.append(encoder.forward_head(encoder.forward_features(x), pre_logits=True).float().cpu())
        labels.append(batch.labels)
    return torch.cat(feats), torch.cat(labels)


class DinoEvaluator(Evaluator):
    primary = "knn_acc"
    metric_labels = {"knn_acc": "k-NN top-1 (teacher, k=20)"}

    def __init__(self, train_set, num_classes: int, k: int = 20, temperature: float = 0.07) -> None:
        self.train_set, self.num_classes, self.k, self.temperature = train_set, num_classes, k, temperature
        self.reset()

    def reset(self) -> None:
        self.bank: tuple[torch.Tensor, torch.Tensor] | None = None
        self.correct, self.n = 0, 0

    def update(self, model: nn.Module, batch: MultiCropBatch) -> None:
        encoder = model.encoder if isinstance(model, DinoModel) else model  # a DINO run: the teacher's
        if self.bank is None:
            data = MultiCropDataset(self.train_set, ImageTransform.for_model(encoder))
            self.bank = encode(encoder, DataLoader(data, 256, collate_fn=collate_multicrop))
        x = batch.crops[0]
        feats = encoder.forward_head(encoder.forward_features(x), pre_logits=True)
        pred = knn_classify(*self.bank, feats, self.num_classes, self.k, self.temperature)
        self.correct += (pred.cpu() == batch.labels.cpu()).sum().item()
        self.n += len(batch)

    def compute(self) -> DinoResult:
        if self.n == 0:
            raise ValueError("evaluation set is empty")
        return DinoResult(self.correct / self.n, self.n)

    def batch_stats(self, outputs: dict[str, torch.Tensor], batch) -> dict[str, float]:
        """The collapse monitor of each training batch (summed over its images; the engine averages per epoch)."""
        return {k: outputs[k].item() * len(batch) for k in ("teacher_entropy", "kl") if k in outputs}
