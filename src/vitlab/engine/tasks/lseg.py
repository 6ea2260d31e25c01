"""Language-driven segmentation (LSeg) on the generated caption set: pixels labelled by text, mIoU seen vs held-out.

Each image of `--data captions` holds one shape; its pixels are labelled with the shape's colour-shape words ("red
circle"), the rest "background". Training uses only the seen combinations as labels (the held-out four never appear
in an image or in the label set); the test label set is all 20 plus background, so the IoU of the held-out classes
measures segmenting by words the model never trained as labels. The text tower is frozen (as LSeg freezes CLIP's);
start it from a CLIP run with `--pretrained RUN` (the dense head is then new), or train both from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vitlab.data import DataSplits, ImageTransform
from vitlab.data.batches import collate_segmentation
from vitlab.data.captions import CaptionSet, generated_captions
from vitlab.data.tokenizer import ClipTokenizer
from vitlab.engine.evaluators.segmentation import SegmentationEvaluator, SegmentationResult
from vitlab.engine.report import Section, new_figure, table
from vitlab.engine.tasks.base import Task, TaskConfig
from vitlab.errors import ConfigError, DataError
from vitlab.methods.lseg import LanguageDrivenSegmentation

BACKGROUND = "background"


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class LSegTaskConfig(TaskConfig):
    tokenizer: str | None = _f(None, "BPE vocabulary of the text tower (default: CLIP's installed one)")
    captions_train: int = _f(4000, "images in the generated caption set's training split")
    captions_val: int = _f(800, "images in its validation split (every colour-shape combination equally)")

    def __post_init__(self) -> None:
        for flag, v in (("--captions-train", self.captions_train), ("--captions-val", self.captions_val)):
            if v < 2:
                raise ConfigError(f"{flag} must be >= 2, got {v}")


def label_set(data: CaptionSet, seen_only: bool) -> list[str]:
    """background, then the data's classes (without the held-out ones for training)."""
    return [BACKGROUND, *(c for c in data.classes if not (seen_only and c in data.held_out))]


class MaskedCaptions(Dataset):
    """(uint8 image, caption, class) + its mask -> (model input, (H, W) int64 index into `labels`)."""

    def __init__(self, base: CaptionSet, transform: ImageTransform, labels: list[str], size: int) -> None:
        self.base, self.transform, self.size = base, transform, size
        self.index = {c: i for i, c in enumerate(labels)}

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, _, label = self.base[i]
        k = self.index[self.base.classes[label]]
        mask = self.base.masks[i].long() * k  # (H, W): k on the object, 0 (background) elsewhere
        if mask.shape[-1] != self.size:
            mask = F.interpolate(mask[None, None].float(), size=(self.size, self.size), mode="nearest")[0, 0].long()
        return self.transform(img), mask


class LSegTask(Task):
    name = "lseg"
    help = "language-driven segmentation (LSeg): per-pixel text matching, mIoU on seen vs held-out label words"
    config_cls = LSegTaskConfig
    default_data = "captions"
    default_model = "lseg_vit_tiny_patch8_32"
    model_kind = "segmenter"
    collate = staticmethod(collate_segmentation)
    run_defaults = {"lr": 1e-3, "min_lr": 1e-6, "weight_decay": 0.05, "batch_size": 64, "epochs": 15,
                    "warmup_epochs": 1.0, "clip_grad": 1.0}  # fmt: skip

    def tokenizer(self, tcfg: LSegTaskConfig) -> ClipTokenizer:
        return ClipTokenizer.from_pretrained(tcfg.tokenizer)

    def load_data(self, spec: str, test_fraction: float, tcfg: LSegTaskConfig) -> DataSplits:
        if spec != "captions":
            raise DataError(f"--task lseg reads --data captions (the generated set with masks), got {spec!r}")
        train = generated_captions(tcfg.captions_train, seed=0, train=True)
        test = generated_captions(tcfg.captions_val, seed=1, train=False)
        return DataSplits(train, test, label_set(test, seen_only=False), natural_images=False)

    def check_model(self, model: nn.Module, splits: DataSplits, where: str) -> None:
        if not hasattr(model, "segment"):
            raise ConfigError(f"{getattr(model, 'model_name', type(model).__name__)} has no dense head to segment")

    def prepare_model(self, model: nn.Module, tcfg: LSegTaskConfig) -> None:
        for p in model.towers["text"].parameters():
            p.requires_grad_(False)

    def datasets(self, splits: DataSplits, model: nn.Module, augment: bool, tcfg: LSegTaskConfig):
        tf, size = ImageTransform.for_model(model), model.cfg.img_size
        return (
            MaskedCaptions(splits.train, tf, label_set(splits.train, seen_only=True), size),
            MaskedCaptions(splits.test, tf, label_set(splits.test, seen_only=False), size),
        )

    def build_method(self, tcfg: LSegTaskConfig, splits: DataSplits, device: torch.device):
        return LanguageDrivenSegmentation(self.tokenizer(tcfg)(label_set(splits.train, seen_only=True)))

    def build_evaluator(self, splits: DataSplits, tcfg: LSegTaskConfig) -> SegmentationEvaluator:
        labels = label_set(splits.test, seen_only=False)
        return SegmentationEvaluator(labels, self.tokenizer(tcfg)(labels), splits.test.held_out)

    def report_sections(self, result: SegmentationResult, splits: DataSplits) -> list[Section]:
        fig = new_figure(8.0, 3.4)
        ax = fig.subplots()
        colours = ["tab:orange" if c in result.held_out else "tab:blue" for c in result.classes]
        ax.bar(np.arange(len(result.classes)), np.nan_to_num(result.iou), color=colours)
        ax.set_xticks(np.arange(len(result.classes)), result.classes, rotation=70, fontsize=7)
        ax.set(ylim=(0, 1.02), ylabel="IoU", title="IoU per label (orange: held out of training)")
        ax.grid(alpha=0.3, axis="y")
        rows = [(c + (" (held out)" if c in result.held_out else ""), f"{v:.4f}")
                for c, v in zip(result.classes, result.iou, strict=True)]  # fmt: skip
        return [Section("IoU per label", table(("label", "IoU"), rows), {"iou.png": fig})]

    def summary_lines(self, result: SegmentationResult, evaluator, splits: DataSplits) -> list[str]:
        return ["  ".join(f"{evaluator.label(k)} {v:.4f}" for k, v in result.metrics.items())]
