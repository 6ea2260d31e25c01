"""Pure loss functions."""

from vitlab.losses.classification import cross_entropy, multilabel_bce, one_hot_smooth, soft_target_cross_entropy
from vitlab.losses.distillation import distillation_kd, distillation_loss

__all__ = [
    "cross_entropy",
    "distillation_kd",
    "distillation_loss",
    "multilabel_bce",
    "one_hot_smooth",
    "soft_target_cross_entropy",
]
