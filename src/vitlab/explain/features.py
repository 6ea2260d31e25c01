"""Penultimate features: extraction through the model API, a t-SNE map, nearest-neighbour retrieval (faiss).

The features are what the classifier's last linear layer sees: `forward_head(forward_features(x), pre_logits=True)`,
the public API every family implements (DESIGN.md), so no model's internals are reached into. Retrieval ranks by
cosine similarity: the features are L2-normalised and searched exactly by inner product (faiss `IndexFlatIP`).
t-SNE: van der Maaten & Hinton, "Visualizing Data using t-SNE" (JMLR 2008), as scikit-learn implements it.

Shapes: B images, D feature width, K classes, N indexed images, Q queries, k neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


@dataclass
class Features:
    """What one pass over a data set gives: penultimate features, logits and the data set's labels."""

    features: torch.Tensor  # (N, D)
    logits: torch.Tensor | None  # (N, K); None for a model without a classifier
    labels: torch.Tensor  # (N,)


@torch.no_grad()
def penultimate_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """((B, D) features before the classifier, (B, K) logits or None where num_classes is 0)."""
    tokens = model.forward_features(x)
    feats = model.forward_head(tokens, pre_logits=True)  # (B, D)
    logits = model.forward_head(tokens) if getattr(model, "num_classes", 0) else None  # (B, K)
    return feats, logits


@torch.no_grad()
def extract_features(
    model: nn.Module, dataset: Dataset, batch_size: int = 256, device: torch.device | str = "cpu"
) -> Features:
    """Features, logits and labels of every sample of a data set of (image, label) pairs, in its order; the model
    is put in eval mode."""
    model.eval().to(device)
    feats, logits, labels = [], [], []
    for x, y in DataLoader(dataset, batch_size=batch_size):
        f, z = penultimate_features(model, x.to(device))
        feats.append(f.float().cpu())
        if z is not None:
            logits.append(z.float().cpu())
        labels.append(torch.as_tensor(y))
    if not feats:
        raise ValueError("the data set is empty")
    return Features(torch.cat(feats), torch.cat(logits) if logits else None, torch.cat(labels))


def tsne_embedding(features: torch.Tensor, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """(N, 2) t-SNE coordinates of (N, D) features (PCA initialisation, as scikit-learn's default). Perplexity must
    stay below N, so it is lowered to (N - 1) / 3 for small sets."""
    from sklearn.manifold import TSNE

    n = len(features)
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 points, got {n}")
    perplexity = min(perplexity, (n - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(features.double().numpy())


def _unit(x: torch.Tensor) -> np.ndarray:
    """Rows scaled to unit length, float32 C-contiguous: what faiss takes, cosine similarity = inner product."""
    return np.ascontiguousarray(torch.nn.functional.normalize(x.float(), dim=-1).numpy(), dtype=np.float32)


class FeatureIndex:
    """Exact cosine-similarity search over a set of feature vectors (faiss `IndexFlatIP` on normalised rows)."""

    def __init__(self, features: torch.Tensor) -> None:
        import faiss

        if features.ndim != 2 or len(features) == 0:
            raise ValueError(f"expected features (N, D) with N >= 1, got shape {tuple(features.shape)}")
        self.index = faiss.IndexFlatIP(features.shape[1])
        self.index.add(_unit(features))

    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """((Q, k) cosine similarities, best first, (Q, k) indices into the indexed features)."""
        if not 1 <= k <= len(self):
            raise ValueError(f"k must be in [1, {len(self)}] (the number of indexed images), got {k}")
        if queries.ndim != 2 or queries.shape[1] != self.index.d:
            raise ValueError(f"expected queries (Q, {self.index.d}), got shape {tuple(queries.shape)}")
        scores, idx = self.index.search(_unit(queries), k)
        return torch.from_numpy(scores), torch.from_numpy(idx).long()
