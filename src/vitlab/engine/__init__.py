"""Training and evaluation engine."""

from vitlab.engine.config import TrainConfig
from vitlab.engine.evaluate import EvalResult, evaluate
from vitlab.engine.trainer import TrainResult, train

__all__ = ["EvalResult", "TrainConfig", "TrainResult", "evaluate", "train"]
