"""Object detection as set prediction (DETR): DetectionBatch, Hungarian-matched set losses, COCO AP by pycocotools.

Data: `--data coco:ROOT` (COCO's instances layout, any category ids) or, by default, the embedded shapes set generated
in memory (`vitlab.data.shapes`; `vitlab data shapes --out DIR` writes the same set to disk in COCO format).
Model: any registered detector (`detr_tiny` by default, `detr_resnet50`, ...), on its own backbone or on
`--backbone NAME` (any registered model with a feature pyramid); `--backbone-pretrained PATH` starts the backbone from
a classification checkpoint, with its BatchNorm frozen and its learning rate --lr-backbone (DETR: lr / 10).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from vitlab.data import DataSplits
from vitlab.data.batches import collate_detection
from vitlab.data.coco import DetectionTransform, TransformedDetection, in_memory, load_coco
from vitlab.data.shapes import shapes_coco
from vitlab.engine.evaluators.detection import DetectionEvaluator, DetectionResult
from vitlab.engine.report import Section, new_figure, table
from vitlab.engine.tasks.base import Task, TaskConfig
from vitlab.errors import ConfigError, DataError
from vitlab.losses.detection import SetCriterion
from vitlab.methods.detr import SetPrediction


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class DetectionConfig(TaskConfig):
    backbone: str | None = _f(None, "registered model whose feature map feeds DETR (default: the model's own)")
    backbone_pretrained: str | None = _f(
        None, "classification checkpoint to start the backbone from (its BatchNorm is then frozen, as in DETR)"
    )
    lr_backbone: float | None = _f(None, "backbone learning rate (default: --lr / 10 with --backbone-pretrained, "
                                         "else --lr)")  # fmt: skip
    min_size: int | None = _f(None, "resize each image's shorter side to this (DETR: 800; default: keep the size)")
    max_size: int | None = _f(None, "cap on the longer side after resizing (DETR: 1333)")
    eos_coef: float = _f(0.1, "cross-entropy weight of the no-object class")
    crop_prob: float = _f(0.5, "chance of DETR's random crop (boxes cut to it) on a training image; 0 turns it off")
    shapes_train: int = _f(2000, "images in the generated shapes training split (--data shapes)")
    shapes_val: int = _f(200, "images in the generated shapes validation split")

    def __post_init__(self) -> None:
        if self.lr_backbone is not None and not (math.isfinite(self.lr_backbone) and self.lr_backbone >= 0):
            raise ConfigError(f"--lr-backbone must be >= 0, got {self.lr_backbone}")
        for flag, v in (("--min-size", self.min_size), ("--max-size", self.max_size)):
            if v is not None and v < 16:
                raise ConfigError(f"{flag} must be >= 16 pixels, got {v}")
        if self.min_size and self.max_size and self.max_size < self.min_size:
            raise ConfigError(f"--max-size ({self.max_size}) must be >= --min-size ({self.min_size})")
        if not (math.isfinite(self.crop_prob) and 0 <= self.crop_prob <= 1):
            raise ConfigError(f"--crop-prob must be in [0, 1], got {self.crop_prob}")
        if not (math.isfinite(self.eos_coef) and 0 < self.eos_coef <= 1):
            raise ConfigError(f"--eos-coef must be in (0, 1], got {self.eos_coef}")
        for flag, v in (("--shapes-train", self.shapes_train), ("--shapes-val", self.shapes_val)):
            if v < 1:
                raise ConfigError(f"{flag} must be >= 1, got {v}")


def shapes_splits(n_train: int, n_val: int, seed: int = 0) -> DataSplits:
    """The embedded shapes set, generated in memory: train from `seed`, validation from `seed + 1`."""
    train_coco, train_px = shapes_coco(n_train, seed)
    val_coco, val_px = shapes_coco(n_val, seed + 1)
    train, val = in_memory(train_coco, train_px, "shapes/train"), in_memory(val_coco, val_px, "shapes/val")
    return DataSplits(train, val, train.classes, natural_images=True)


class DetectionTask(Task):
    name = "detection"
    help = "boxes and classes as set prediction (DETR): Hungarian matching, COCO AP (generated shapes or coco:ROOT)"
    config_cls = DetectionConfig
    collate = staticmethod(collate_detection)
    default_data = "shapes"
    default_model = "detr_tiny"
    model_kind = "detector"
    # DETR's optimiser (sec. 4; REFERENCE.md); lr twice the paper's for the small CPU config and batch 16
    run_defaults = {"lr": 2e-4, "min_lr": 1e-6, "weight_decay": 1e-4, "clip_grad": 0.1, "batch_size": 16,
                    "epochs": 30, "warmup_epochs": 1.0}  # fmt: skip

    def load_data(self, spec: str, test_fraction: float, tcfg: DetectionConfig) -> DataSplits:
        if spec == "shapes":
            return shapes_splits(tcfg.shapes_train, tcfg.shapes_val)
        kind, _, root = spec.partition(":")
        if kind != "coco" or not root:
            raise DataError(f"--task detection reads --data shapes or coco:ROOT, got {spec!r}")
        train, val = load_coco(root)
        return DataSplits(train, val, train.classes, natural_images=True)

    def model_kwargs(self, splits: DataSplits, tcfg: DetectionConfig) -> dict:
        kw = {"num_classes": len(splits.classes), "labels": tuple(splits.classes)}
        if tcfg.backbone is not None:
            kw.update(backbone=tcfg.backbone, backbone_kwargs={})
        # a backbone trained from scratch needs live BatchNorm; a pretrained one keeps its statistics frozen
        kw["freeze_bn"] = tcfg.backbone_pretrained is not None
        return kw

    def check_model(self, model: nn.Module, splits: DataSplits, where: str) -> None:
        if not hasattr(model, "box_head"):
            raise ConfigError(f"{getattr(model, 'model_name', type(model).__name__)} is not a detector")
        if model.num_classes != len(splits.classes):
            raise ConfigError(f"{where} has {len(splits.classes)} categories but the detector predicts "
                              f"{model.num_classes}")  # fmt: skip
        labels = list(model.cfg.labels)
        if labels and labels != list(splits.classes):
            raise ConfigError(f"{where} has categories {', '.join(splits.classes)} but the detector was trained on "
                              f"{', '.join(labels)}")  # fmt: skip

    def prepare_model(self, model: nn.Module, tcfg: DetectionConfig) -> None:
        if tcfg.backbone_pretrained is None:
            return
        from vitlab.factory import create_model

        source = create_model(model.cfg.backbone, pretrained=tcfg.backbone_pretrained, **model.cfg.backbone_kwargs)
        state = {k: v for k, v in source.state_dict().items() if k in model.backbone.model.state_dict()}
        missing = sorted(set(model.backbone.model.state_dict()) - set(state))
        if missing:
            raise ConfigError(
                f"--backbone-pretrained {tcfg.backbone_pretrained}: no weights for {', '.join(missing[:4])}"
            )
        model.backbone.model.load_state_dict(state, strict=False)
        # the frozen BatchNorms were copied at construction: copy the loaded statistics into them too
        with torch.no_grad():
            for name, module in model.backbone.model.named_modules():
                if hasattr(module, "running_var") and f"{name}.running_var" in state:
                    for key in ("weight", "bias", "running_mean", "running_var"):
                        getattr(module, key).copy_(state[f"{name}.{key}"])

    def lr_multipliers(self, model: nn.Module, tcfg: DetectionConfig, lr: float) -> dict[str, float]:
        if tcfg.lr_backbone is not None:
            return model.lr_multipliers(tcfg.lr_backbone / lr)
        return model.lr_multipliers(0.1) if tcfg.backbone_pretrained is not None else {}

    def datasets(self, splits: DataSplits, model: nn.Module, augment: bool, tcfg: DetectionConfig):
        pc = model.pretrained_cfg
        kw = dict(in_chans=pc["input_size"][0], mean=pc["mean"], std=pc["std"], min_size=tcfg.min_size,
                  max_size=tcfg.max_size)  # fmt: skip
        return (
            TransformedDetection(splits.train, DetectionTransform(**kw, train=augment, crop_prob=tcfg.crop_prob)),
            TransformedDetection(splits.test, DetectionTransform(**kw)),
        )

    def build_method(self, tcfg: DetectionConfig, splits: DataSplits, device: torch.device) -> SetPrediction:
        return SetPrediction(SetCriterion(eos_coef=tcfg.eos_coef))

    def build_evaluator(self, splits: DataSplits, tcfg: DetectionConfig) -> DetectionEvaluator:
        return DetectionEvaluator(splits.test.coco, splits.test.categories.ids)

    def report_sections(self, result: DetectionResult, splits: DataSplits) -> list[Section]:
        classes = list(splits.classes)
        fig = new_figure(max(4.0, 0.5 * len(classes)), 3.2)
        ax = fig.subplots()
        ax.bar(range(len(classes)), [0 if math.isnan(a) else a for a in result.per_class_ap], color="tab:blue")
        ax.set_xticks(range(len(classes)), classes, rotation=90 if len(classes) > 10 else 0)
        ax.set(xlabel="category", ylabel="AP 0.50:0.95", ylim=(0, 1.02), title=f"AP {result.ap:.4f}")
        ax.grid(alpha=0.3, axis="y")
        rows = [(c, f"{a:.4f}") for c, a in zip(classes, result.per_class_ap, strict=True)]
        sections = [Section("AP per category", table(("category", "AP"), rows), {"per_category_ap.png": fig})]
        if result.examples:
            sections.append(Section("Detections on validation images (score >= 0.5)",
                                    figures={"detections.png": plot_examples(result, splits)}))  # fmt: skip
        return sections

    def summary_lines(self, result: DetectionResult, evaluator, splits: DataSplits) -> list[str]:
        head = "  ".join(f"{evaluator.label(k)} {v:.4f}" for k, v in result.metrics.items())
        width = max(len(c) for c in splits.classes)
        lines = [head, "AP per category:"]
        lines += [f"  {c:<{width}}  {a:.4f}" for c, a in zip(splits.classes, result.per_class_ap, strict=True)]
        return lines


def plot_examples(result: DetectionResult, splits: DataSplits):
    """Up to 8 validation images with their detections drawn (class name and score)."""
    from vitlab.data.draw import draw_detections

    by_id = {im["id"]: i for i, im in enumerate(splits.test.images)}
    ids = [i for i in result.examples if i in by_id][:8]
    cols = min(4, len(ids))
    rows = math.ceil(len(ids) / cols)
    fig = new_figure(3.0 * cols, 3.0 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image_id in zip(axes, ids, strict=False):
        img, _ = splits.test[by_id[image_id]]
        ax.imshow(draw_detections(img, result.examples[image_id], splits.classes))
    return fig
