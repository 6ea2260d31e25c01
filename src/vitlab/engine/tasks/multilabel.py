"""Multi-label classification: several labels per image, one sigmoid each; mean average precision.

The embedded default data (`--data digits`) pastes 1..`--max-digits` of scikit-learn's digits into a 2x2 grid
(`vitlab.data.generated`), each image labelled with the set of digits it shows. Any registered classifier works: its
head gives one logit per label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from vitlab.data import DataSplits
from vitlab.data.generated import multi_digit_splits
from vitlab.engine.evaluators import MultiLabelEvaluator, MultiLabelResult
from vitlab.engine.report import Section, new_figure, table
from vitlab.engine.tasks.base import ClassifierTask, TaskConfig
from vitlab.errors import ConfigError, DataError
from vitlab.methods import MultiLabel


@dataclass(frozen=True)
class MultiLabelConfig(TaskConfig):
    max_digits: int = field(default=3, metadata={"help": "digits per generated image, 1 to 4 (a 2x2 grid)"})
    threshold: float = field(default=0.5, metadata={"help": "sigmoid score above which a label is predicted"})

    def __post_init__(self) -> None:
        if not 1 <= self.max_digits <= 4:
            raise ConfigError(f"--max-digits must be between 1 and 4, got {self.max_digits}")
        if not 0 < self.threshold < 1:
            raise ConfigError(f"--threshold must be in (0, 1), got {self.threshold}")


class MultiLabelTask(ClassifierTask):
    name = "multilabel"
    help = "several labels per image: binary cross-entropy, mean average precision (generated multi-digit images)"
    config_cls = MultiLabelConfig

    def load_data(self, spec: str, test_fraction: float, tcfg: MultiLabelConfig) -> DataSplits:
        if spec != "digits":
            raise DataError(f"--task multilabel reads --data digits (generated multi-digit images), got {spec!r}")
        return multi_digit_splits(tcfg.max_digits, test_fraction=test_fraction)

    def build_method(self, tcfg: MultiLabelConfig, splits: DataSplits, device: torch.device) -> MultiLabel:
        return MultiLabel()

    def build_evaluator(self, splits: DataSplits, tcfg: MultiLabelConfig) -> MultiLabelEvaluator:
        return MultiLabelEvaluator(len(splits.classes), tcfg.threshold)

    def report_sections(self, result: MultiLabelResult, splits: DataSplits) -> list[Section]:
        classes = list(splits.classes)
        fig = new_figure(max(4.0, 0.5 * len(classes)), 3.2)
        ax = fig.subplots()
        ax.bar(range(len(classes)), [0 if math.isnan(a) else a for a in result.per_class_ap], color="tab:blue")
        ax.set_xticks(range(len(classes)), classes)
        ax.set(xlabel="label", ylabel="average precision", ylim=(0, 1.02), title=f"mAP {result.mean_ap:.4f}")
        ax.grid(alpha=0.3, axis="y")
        rows = [(c, f"{a:.4f}") for c, a in zip(classes, result.per_class_ap, strict=True)]
        return [Section("Average precision per label", table(("label", "AP"), rows), {"per_label_ap.png": fig})]
