"""Pure loss functions."""

from vitlab.losses.classification import cross_entropy, one_hot_smooth, soft_target_cross_entropy
from vitlab.losses.distillation import distillation_loss

__all__ = ["cross_entropy", "distillation_loss", "one_hot_smooth", "soft_target_cross_entropy"]
