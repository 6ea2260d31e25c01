"""Training methods: how a batch becomes a loss, using only a model's public API."""

from vitlab.methods.distill import Distillation
from vitlab.methods.supervised import Supervised

__all__ = ["Distillation", "Supervised"]
