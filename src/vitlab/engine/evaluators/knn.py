"""Judging a frozen representation: weighted k-NN (as DINO) and a linear probe, for any model's pooled features.

k-NN (Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", arXiv 2104.14294, sec. 4.1 and
their `eval_knn.py` protocol; Wu et al. 2018, arXiv 1805.01978): features L2-normalised; each test image takes the
k = 20 training images of highest cosine similarity s, each voting for its class with weight exp(s / T), T = 0.07;
the class with the largest summed weight wins.

Linear probe: DINO trains a linear layer on frozen features with SGD; here scikit-learn's L2-regularised multinomial
logistic regression (L-BFGS) is fitted on the standardised training features (the mean and scale of the training
split), with C = 1 — a convex fit with a unique optimum, so the figure does not depend on a learning-rate schedule.

Features come through an encoder's public API only: `forward_head(forward_features(x), pre_logits=True)` (timm's
contract: the pooled representation before the classifier, so a self-supervised projection head or a classifier is
skipped alike), or `encode_image` for image-text models.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vitlab.data.batches import FeatureBatch
from vitlab.engine.evaluators.base import Evaluator

__all__ = [
    "BankAndQueries",
    "RepresentationEvaluator",
    "RepresentationResult",
    "encoder_features",
    "knn_classify",
    "linear_probe",
]

KNN_K = 20  # DINO's k-NN (sec. 4.1: 20 nearest neighbours)
KNN_T = 0.07  # the temperature of the votes' weights exp(s / T)
PROBE_C = 1.0  # inverse L2 strength of the probe on standardised features


def encoder_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, D) float32 pooled features before any head (tokens or maps averaged if left unpooled)."""
    if hasattr(model, "encode_image"):  # image-text models: the image tower's embedding
        f = model.encode_image(images)
    else:
        f = model.forward_head(model.forward_features(images), pre_logits=True)
    if f.ndim == 3:  # (B, N, D) tokens of a model built without pooling
        f = f.mean(1)
    elif f.ndim == 4:  # (B, C, H, W) maps
        f = f.mean((2, 3))
    return f.float()


@torch.no_grad()
def knn_classify(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, num_classes: int, k: int = KNN_K,
    temperature: float = KNN_T, chunk: int = 1024,
) -> torch.Tensor:  # fmt: skip
    """(M,) predicted classes of the test features by temperature-weighted cosine k-NN over the training features.

    Shapes: train_x (N, D), train_y (N,) in 0..num_classes-1, test_x (M, D). k is capped at N.
    """
    if k < 1 or not temperature > 0:
        raise ValueError(f"k must be >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    bank = F.normalize(train_x.float(), dim=-1)
    k = min(k, len(bank))
    preds = []
    for q in F.normalize(test_x.float(), dim=-1).split(chunk):
        sim, idx = (q @ bank.t()).topk(k, dim=1)  # (m, k) similarities and indices of the nearest
        weights = (sim / temperature).exp()  # (m, k)
        votes = torch.zeros(len(q), num_classes, dtype=weights.dtype, device=weights.device)
        votes.scatter_add_(1, train_y[idx], weights)  # (m, K) summed weight per class
        preds.append(votes.argmax(1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def linear_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, C: float = PROBE_C, max_iter: int = 1000
) -> torch.Tensor:
    """(M,) predictions of a logistic regression fitted on standardised (train_x, train_y), applied to test_x."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, t = train_x.double().cpu().numpy(), test_x.double().cpu().numpy()
    y = train_y.cpu().numpy()
    if len(np.unique(y)) < 2:  # a single class: nothing to fit, every prediction is that class
        return torch.full((len(t),), int(y[0]) if len(y) else 0, dtype=torch.long)
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=C, max_iter=max_iter)
    with warnings.catch_warnings():  # an unconverged fit of a random-init encoder still gives its best figure
        warnings.simplefilter("ignore")
        clf.fit(scaler.transform(x), y)
    return torch.from_numpy(clf.predict(scaler.transform(t))).long()


class BankAndQueries(Dataset):
    """The training split then the test split, each image transformed for evaluation and tagged with its role:
    (model input, label, True for the reference set k-NN and the probe learn from)."""

    def __init__(self, train, test, transform) -> None:
        self.train, self.test, self.transform = train, test, transform

    def __len__(self) -> int:
        return len(self.train) + len(self.test)

    def __getitem__(self, i: int):
        bank = i < len(self.train)
        img, label = self.train[i] if bank else self.test[i - len(self.train)]
        return self.transform(img), int(label), bank


@dataclass
class RepresentationResult:
    knn_top1: float  # k-NN accuracy on the test split
    probe_top1: float  # linear-probe accuracy (nan when the probe was not run)
    count: int  # test images judged
    bank: int  # reference images
    k: int
    temperature: float
    per_class_knn: list[float] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, float]:
        m = {"knn_top1": self.knn_top1}
        if not math.isnan(self.probe_top1):
            m["probe_top1"] = self.probe_top1
        return m

    def details(self) -> dict:
        return {**self.metrics, "count": self.count, "bank": self.bank, "k": self.k, "temperature": self.temperature,
                "per_class_knn": self.per_class_knn}  # fmt: skip


class RepresentationEvaluator(Evaluator):
    """k-NN (primary) and linear-probe accuracy of the frozen features, over FeatureBatches of bank and queries."""

    primary = "knn_top1"
    metric_labels = {"knn_top1": "k-NN top-1", "probe_top1": "linear-probe top-1"}
    curve_metrics = ("probe_top1",)

    def __init__(self, num_classes: int, k: int = KNN_K, temperature: float = KNN_T, probe: bool = True) -> None:
        self.num_classes, self.k, self.temperature, self.probe = num_classes, k, temperature, probe
        self.reset()

    def reset(self) -> None:
        self._feats: dict[bool, list[torch.Tensor]] = {True: [], False: []}
        self._labels: dict[bool, list[torch.Tensor]] = {True: [], False: []}

    @torch.no_grad()
    def update(self, model: nn.Module, batch: FeatureBatch) -> None:
        f = encoder_features(model, batch.images).cpu()
        for role in (True, False):
            sel = batch.bank.cpu() == role
            self._feats[role].append(f[sel])
            self._labels[role].append(batch.labels.cpu()[sel])

    def compute(self) -> RepresentationResult:
        bx, by = torch.cat(self._feats[True]), torch.cat(self._labels[True])
        qx, qy = torch.cat(self._feats[False]), torch.cat(self._labels[False])
        if len(bx) == 0 or len(qx) == 0:
            raise ValueError(f"k-NN needs reference and test images; got {len(bx)} and {len(qx)}")
        pred = knn_classify(bx, by, qx, self.num_classes, self.k, self.temperature)
        hit = (pred == qy).float()
        per_class = [hit[qy == c].mean().item() if (qy == c).any() else math.nan for c in range(self.num_classes)]
        probe = (linear_probe(bx, by, qx) == qy).float().mean().item() if self.probe else math.nan
        return RepresentationResult(hit.mean().item(), probe, len(qx), len(bx), min(self.k, len(bx)),
                                    self.temperature, per_class)  # fmt: skip
