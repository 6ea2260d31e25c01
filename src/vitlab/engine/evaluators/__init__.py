"""Evaluators: one per task, each naming its primary metric."""

from vitlab.engine.evaluators.base import EvalResult, Evaluator, evaluate
from vitlab.engine.evaluators.classification import ClassificationEvaluator, ClassificationResult
from vitlab.engine.evaluators.detection import DetectionEvaluator, DetectionResult
from vitlab.engine.evaluators.knn import RepresentationEvaluator, RepresentationResult
from vitlab.engine.evaluators.multilabel import MultiLabelEvaluator, MultiLabelResult

__all__ = [
    "ClassificationEvaluator",
    "ClassificationResult",
    "DetectionEvaluator",
    "DetectionResult",
    "EvalResult",
    "Evaluator",
    "MultiLabelEvaluator",
    "MultiLabelResult",
    "RepresentationEvaluator",
    "RepresentationResult",
    "evaluate",
]
