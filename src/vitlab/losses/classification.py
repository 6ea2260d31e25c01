"""Classification losses: cross-entropy on hard labels (with label smoothing) or on soft targets (mixup/cutmix)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def one_hot_smooth(targets: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """(B,) labels -> (B, K) distributions: 1 - smoothing + smoothing/K on the label, smoothing/K elsewhere."""
    off = smoothing / num_classes
    out = torch.full((targets.shape[0], num_classes), off, device=targets.device)
    return out.scatter_(1, targets[:, None], 1.0 - smoothing + off)


def soft_target_cross_entropy(*, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_k target_k log softmax(logits)_k; target rows sum to 1."""
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def cross_entropy(*, logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Hard labels (B,) or soft targets (B, K), whichever `target` is."""
    if target.ndim == 2:
        return soft_target_cross_entropy(logits=logits, target=target)
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)


def multilabel_bce(*, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Multi-label loss: mean over the batch and the K labels of the binary cross-entropy of sigmoid(logits)."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())
