"""Training methods: how a batch becomes unweighted losses by name, using only a model's public API."""

from vitlab.methods.base import Method, StepOutput, weighted_loss
from vitlab.methods.detr import SetPrediction
from vitlab.methods.distill import Distillation
from vitlab.methods.mae import MaskedImageModelling
from vitlab.methods.multilabel import MultiLabel
from vitlab.methods.simclr import SimCLR, SupervisedContrastive
from vitlab.methods.supervised import Supervised

__all__ = [
    "Distillation",
    "MaskedImageModelling",
    "Method",
    "MultiLabel",
    "SetPrediction",
    "SimCLR",
    "StepOutput",
    "Supervised",
    "SupervisedContrastive",
    "weighted_loss",
]
