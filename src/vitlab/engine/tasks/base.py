"""A task = a batch type (and its collate) + a method + an evaluator + report sections + its config (CLI flags).

The engine knows tasks only through this interface; `vitlab train --task NAME` looks one up in `vitlab.engine.tasks`.
A task's config dataclass becomes its CLI flags (field help = flag help), shown only under `--task NAME`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from vitlab.data import DataSplits, ImageTransform, TransformedDataset
from vitlab.data.batches import collate_images
from vitlab.engine.evaluators import EvalResult, Evaluator
from vitlab.engine.report import Section
from vitlab.errors import ConfigError
from vitlab.methods import Method


@dataclass(frozen=True)
class TaskConfig:
    """Base of the task configs (a task without options uses it as it is)."""


class Task:
    name: str = ""
    help: str = ""  # one line for `vitlab train --help`
    config_cls: type = TaskConfig
    collate: Callable  # list of dataset samples -> the task's batch type
    default_data: str = "digits"
    default_model: str = "vit_micro_patch4_8"  # what --model means when not given
    model_kind: str = "classifier"  # the registry kind of model this task trains
    supports_fsdp: bool = True  # False: --fsdp is refused (the model is not one sharded forward)
    run_defaults: dict = {}  # run flags this task starts from when not given (DETR's lr, weight decay, clipping)
    adam_betas: tuple[float, float] = (0.9, 0.999)  # AdamW's betas (MAE: beta2 0.95)

    def run_defaults_for(self, cfg) -> dict:
        """The run flags this task starts from, given the run's config (a learning rate that follows the batch)."""
        return self.run_defaults

    def for_evaluation(self) -> Task:
        """The task whose evaluator judges this task's checkpoints (distillation: classification, no teacher)."""
        return self

    def load_data(self, spec: str, test_fraction: float, tcfg) -> DataSplits:
        """Train / test splits of raw samples (uint8 images and targets), before any model-specific transform."""
        raise NotImplementedError

    def model_kwargs(self, splits: DataSplits, tcfg) -> dict:
        """What the model needs from the data and the task's flags at construction (e.g. the number of classes and
        their names)."""
        return {}

    def prepare_model(self, model: nn.Module, tcfg) -> None:
        """Changes to the freshly built model before training (e.g. pretrained backbone weights); none by default."""

    def wrap_model(self, model: nn.Module, tcfg) -> nn.Module:
        """The module the run trains, saves and evaluates, built around the registered model (DINO: student and
        teacher with their heads); the model itself by default."""
        return model

    def history_sections(self, metrics: list[dict]) -> list[Section]:
        """Report sections drawn from the per-epoch metrics (metrics.jsonl rows); none by default."""
        return []

    def lr_multipliers(self, model: nn.Module, tcfg, lr: float) -> dict[str, float]:
        """Parameter-name prefix -> factor on --lr (DETR's backbone); every parameter at --lr by default."""
        return {}

    def check_model(self, model: nn.Module, splits: DataSplits, where: str) -> None:
        """One clear error when a given model cannot serve this data (`vitlab eval` of a checkpoint)."""

    def datasets(self, splits: DataSplits, model: nn.Module, augment: bool, tcfg) -> tuple[Dataset, Dataset]:
        """(train, test) data sets yielding model inputs: the model's input size, channels and normalisation."""
        natural = splits.natural_images
        train_tf = ImageTransform.for_model(model, train=augment, hflip=natural, affine=not natural)
        test_tf = ImageTransform.for_model(model)  # timm's eval: resize to img_size / crop_pct, centre crop
        return TransformedDataset(splits.train, train_tf), TransformedDataset(splits.test, test_tf)

    def build_method(self, tcfg, splits: DataSplits, device: torch.device) -> Method:
        raise NotImplementedError

    def build_evaluator(self, splits: DataSplits, tcfg) -> Evaluator:
        raise NotImplementedError

    def report_sections(self, result: EvalResult, splits: DataSplits) -> list[Section]:
        return []

    def summary_lines(self, result: EvalResult, evaluator: Evaluator, splits: DataSplits) -> list[str]:
        """What `vitlab eval` prints: the metrics, then whatever the task adds."""
        return ["  ".join(f"{evaluator.label(k)} {v:.4f}" for k, v in result.metrics.items())]


class ClassifierTask(Task):
    """A task whose model ends in one logit per class (single- or multi-label): the head is sized by the data."""

    collate = staticmethod(collate_images)

    def model_kwargs(self, splits: DataSplits, tcfg) -> dict:
        return {"num_classes": len(splits.classes), "labels": list(splits.classes)}

    def check_model(self, model: nn.Module, splits: DataSplits, where: str) -> None:
        """The head must have one logit per class of the data, and where the checkpoint names its classes, the same
        names in the same order: index i must mean the same class to both, or every metric is a silent lie."""
        if getattr(model, "num_classes", None) != len(splits.classes):
            raise ConfigError(
                f"{where} has {len(splits.classes)} classes but the checkpoint's head has {model.num_classes}"
            )
        labels = list(getattr(model.cfg, "labels", ()) or ())
        if labels and labels != list(splits.classes):
            order = " (the same names in another order)" if sorted(labels) == sorted(splits.classes) else ""
            raise ConfigError(
                f"{where} has classes {', '.join(splits.classes)} but the checkpoint was trained on "
                f"{', '.join(labels)}{order}; evaluate on data with the checkpoint's classes"
            )
