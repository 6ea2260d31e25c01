"""Image classification and DeiT distillation: ImageBatch, cross-entropy (+ teacher), top-1/top-5, confusion matrix."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from vitlab.data import DataSplits, hold_out_classes, load_data, resolve_classes
from vitlab.engine.evaluators import ClassificationEvaluator, ClassificationResult
from vitlab.engine.report import Section, new_figure, table
from vitlab.engine.tasks.base import ClassifierTask, Task, TaskConfig
from vitlab.errors import ConfigError, DataError
from vitlab.factory import create_model, fit_state, load_checkpoint
from vitlab.methods import Distillation, Supervised
from vitlab.weights import checkpoint_model_name, read_pretrained


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ClassificationConfig(TaskConfig):
    label_smoothing: float = _f(0.1, "label smoothing of the cross-entropy")
    mixup: float = _f(0.0, "mixup alpha, 0 = off (DeiT: 0.8)")
    cutmix: float = _f(0.0, "cutmix alpha, 0 = off (DeiT: 1.0)")
    hold_out: str = _f(
        "",
        "classes left out of training and the test metrics (comma-separated names or indices, e.g. 8,9), for "
        "open-set recognition: `vitlab explain open-set` scores them against the known test images",
    )

    def __post_init__(self) -> None:
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        for flag, v in (("--mixup", self.mixup), ("--cutmix", self.cutmix)):
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{flag} must be >= 0 (0 = off), got {v}")


@dataclass(frozen=True)
class DistillationConfig(ClassificationConfig):
    teacher: str | None = _f(
        None, "teacher checkpoint (required): vitlab run or file; other formats with --teacher-model"
    )
    teacher_model: str | None = _f(None, "teacher architecture when --teacher is not a vitlab checkpoint")
    distill: str = _f("hard", "hard (CE on the teacher's argmax) or soft (KL at temperature tau)")
    alpha: float = _f(0.5, "weight of the distillation term; the label term gets 1 - alpha")
    tau: float = _f(1.0, "soft-distillation temperature")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.teacher:
            raise ConfigError("--task distillation needs --teacher CHECKPOINT")
        if self.distill not in ("hard", "soft"):
            raise ConfigError(f"--distill must be 'hard' or 'soft', got {self.distill!r}")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"--alpha must be in [0, 1], got {self.alpha}")
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise ConfigError(f"--tau must be > 0, got {self.tau}")


class ClassificationTask(ClassifierTask):
    name = "classification"
    help = "one label per image: cross-entropy, top-1/top-5, confusion matrix"
    config_cls = ClassificationConfig

    def load_data(self, spec: str, test_fraction: float, tcfg) -> DataSplits:
        splits = load_data(spec, test_fraction)
        if tcfg.hold_out:
            held = resolve_classes(tcfg.hold_out, list(splits.classes), f"--hold-out (--data {spec})")
            splits = hold_out_classes(splits, held)[0]
            if len(splits.classes) < 2:
                raise DataError(
                    f"--hold-out {tcfg.hold_out} leaves {len(splits.classes)} of the classes of --data {spec}; "
                    "classification needs at least 2"
                )
        if len(splits.classes) < 2:  # one logit: the softmax is 1 whatever the image, nothing is learned
            raise DataError(
                f"--data {spec}: classification needs at least 2 classes, found {len(splits.classes)} "
                f"({', '.join(splits.classes)})"
            )
        return splits

    def build_method(self, tcfg: ClassificationConfig, splits: DataSplits, device: torch.device) -> Supervised:
        return Supervised(len(splits.classes), tcfg.label_smoothing, tcfg.mixup, tcfg.cutmix)

    def build_evaluator(self, splits: DataSplits, tcfg: ClassificationConfig) -> ClassificationEvaluator:
        return ClassificationEvaluator(len(splits.classes))

    def report_sections(self, result: ClassificationResult, splits: DataSplits) -> list[Section]:
        classes = list(splits.classes)
        return [
            Section("Confusion matrix", figures={"confusion.png": plot_confusion(result, classes)}),
            Section(
                "Per-class accuracy",
                table(("class", "accuracy"), [(c, f"{a:.4f}") for c, a in zip(classes, result.per_class, strict=True)]),
            ),
        ]

    def summary_lines(self, result: ClassificationResult, evaluator, splits: DataSplits) -> list[str]:
        width = max(len(c) for c in splits.classes)
        lines = [f"top-1 {result.top1:.4f}  top-5 {result.top5:.4f}  loss {result.loss:.4f}", "per-class accuracy:"]
        lines += [f"  {c:<{width}}  {a:.4f}" for c, a in zip(splits.classes, result.per_class, strict=True)]
        return lines


class DistillationTask(ClassificationTask):
    name = "distillation"
    help = "classification with a frozen teacher (DeiT): label + distillation terms"
    config_cls = DistillationConfig

    def for_evaluation(self) -> Task:
        return ClassificationTask()

    def build_method(self, tcfg: DistillationConfig, splits: DataSplits, device: torch.device) -> Distillation:
        K = len(splits.classes)
        if tcfg.teacher_model is not None:
            # A bare state dict names no class count: build the teacher for the data's, and refuse a file whose
            # classifier does not fit it (the factory would re-initialise it: a teacher with a random head).
            ckpt = read_pretrained(tcfg.teacher)
            teacher = create_model(tcfg.teacher_model, pretrained=tcfg.teacher, num_classes=K)
            _, reset, new = fit_state(teacher, ckpt)
            if reset or new:
                shapes = ", ".join(str(tuple(ckpt.state[k].shape)) for k in reset if k in ckpt.state)
                found = f"a classifier of shape {shapes}" if shapes else "no classifier"
                raise ConfigError(f"--teacher {tcfg.teacher} holds {found}, not one for the data's {K} classes")
        elif checkpoint_model_name(tcfg.teacher) is not None:
            teacher = load_checkpoint(tcfg.teacher)
        else:
            raise ConfigError(
                f"--teacher {tcfg.teacher}: not a vitlab checkpoint; give its architecture with --teacher-model"
            )
        if getattr(teacher, "num_classes", K) != K:
            raise ConfigError(f"--teacher {tcfg.teacher} predicts {teacher.num_classes} classes, the data has {K}")
        labels = list(teacher.cfg.labels)
        if labels and labels != list(splits.classes):
            raise ConfigError(
                f"--teacher {tcfg.teacher} was trained on classes {', '.join(labels)}, the data has "
                f"{', '.join(splits.classes)}"
            )
        return Distillation(
            teacher.to(device), K, tcfg.distill, tcfg.alpha, tcfg.tau, tcfg.label_smoothing, tcfg.mixup, tcfg.cutmix
        )


def plot_confusion(result: ClassificationResult, classes: list[str]):
    K = len(classes)
    size = min(12, 3 + 0.4 * K)
    fig = new_figure(size, size * 0.9)
    ax = fig.subplots()
    im = ax.imshow(result.confusion, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    if K <= 30:
        ax.set_xticks(range(K), classes, rotation=90 if K > 10 else 0)
        ax.set_yticks(range(K), classes)
        peak = max(max(row) for row in result.confusion) or 1
        for i, row in enumerate(result.confusion):
            for j, v in enumerate(row):
                if v:
                    ax.text(j, i, v, ha="center", va="center", fontsize=8, color="white" if v > peak / 2 else "black")
    top1 = "nan" if math.isnan(result.top1) else f"{result.top1:.4f}"
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion matrix (top-1 {top1})")
    return fig
