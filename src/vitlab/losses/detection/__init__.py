"""DETR's set prediction: Hungarian matching and the set criterion (arXiv 2005.12872, sec. 3.1)."""

from vitlab.losses.detection.criterion import SetCriterion, set_losses
from vitlab.losses.detection.matcher import hungarian_match, match_cost

__all__ = ["SetCriterion", "hungarian_match", "match_cost", "set_losses"]
