"""Training and evaluation engine: one loop for every task."""

from vitlab.engine.config import TrainConfig
from vitlab.engine.evaluators import EvalResult, Evaluator, evaluate
from vitlab.engine.trainer import TrainResult, train

__all__ = ["EvalResult", "Evaluator", "TrainConfig", "TrainResult", "evaluate", "train"]
