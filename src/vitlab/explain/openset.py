"""Open-set recognition from a closed-set classifier's logits: how well does a score tell known from unknown classes?

Scores (higher = more likely a known class):
- max-softmax probability, the baseline of Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and
  Out-of-Distribution Examples in Neural Networks" (arXiv 1610.02136);
- max-logit, Vaze et al., "Open-Set Recognition: a Good Closed-Set Classifier is All You Need" (arXiv 2110.06207);
- energy, Liu et al., "Energy-based Out-of-distribution Detection" (arXiv 2010.03496): the negative free energy
  -E(x) = T * logsumexp(f(x) / T), T = 1.

Metrics, with the known classes as positives: AUROC (scikit-learn's roc_auc_score), and FPR@95, the share of unknown
images accepted at the threshold that keeps 95% of the known ones (the largest threshold t with
P(known score >= t) >= 0.95).

Shapes: N images, K known classes.
"""

from __future__ import annotations

import math

import torch

SCORES = ("max_logit", "max_softmax", "energy")


def open_set_scores(logits: torch.Tensor, temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """(N, K) logits -> {score name: (N,) score}, higher meaning "a known class"."""
    logits = logits.double()
    return {
        "max_logit": logits.max(dim=-1).values,
        "max_softmax": logits.softmax(dim=-1).max(dim=-1).values,
        "energy": temperature * torch.logsumexp(logits / temperature, dim=-1),
    }


def auroc(known: torch.Tensor, unknown: torch.Tensor) -> float:
    """Area under the ROC curve of the score separating known (positives) from unknown images; ties count half."""
    from sklearn.metrics import roc_auc_score

    _check(known, unknown)
    y = torch.cat([torch.ones(len(known)), torch.zeros(len(unknown))]).numpy()
    return float(roc_auc_score(y, torch.cat([known, unknown]).double().numpy()))


def tpr_threshold(known: torch.Tensor, tpr: float = 0.95) -> float:
    """The largest threshold t that keeps at least `tpr` of the known scores (score >= t accepted)."""
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    ranked = known.double().sort(descending=True).values
    # ceil with a tolerance: 0.95 * 20 is 19.000000000000004 in floating point, and 19 of 20 is already 95%
    return float(ranked[math.ceil(tpr * len(ranked) - 1e-9) - 1])


def fpr_at_tpr(known: torch.Tensor, unknown: torch.Tensor, tpr: float = 0.95) -> float:
    """Share of unknown images whose score reaches the threshold that keeps `tpr` of the known ones (FPR@95)."""
    _check(known, unknown)
    t = tpr_threshold(known, tpr)
    return float((unknown.double() >= t).double().mean())


def _check(known: torch.Tensor, unknown: torch.Tensor) -> None:
    if len(known) == 0 or len(unknown) == 0:
        raise ValueError(f"need known and unknown scores, got {len(known)} known and {len(unknown)} unknown")
    if not (torch.isfinite(known).all() and torch.isfinite(unknown).all()):
        raise ValueError("scores hold NaN or infinite values")
