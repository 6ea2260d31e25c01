"""Pure loss functions."""

from vitlab.losses.classification import cross_entropy, multilabel_bce, one_hot_smooth, soft_target_cross_entropy
from vitlab.losses.contrastive import clip_loss, siglip_loss
from vitlab.losses.distillation import distillation_kd, distillation_loss
from vitlab.losses.selfsup import nt_xent_loss, supcon_loss, triplet_batch_hard_loss

__all__ = [
    "clip_loss",
    "cross_entropy",
    "distillation_kd",
    "distillation_loss",
    "multilabel_bce",
    "nt_xent_loss",
    "one_hot_smooth",
    "siglip_loss",
    "soft_target_cross_entropy",
    "supcon_loss",
    "triplet_batch_hard_loss",
]
