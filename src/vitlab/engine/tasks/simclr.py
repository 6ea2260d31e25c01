"""Contrastive pre-training of an encoder: SimCLR (no labels) and SupCon / batch-hard triplet (labels), judged by
k-NN and linear-probe accuracy of the frozen representation.

Data: any classification data spec (`--data mnist5k` by default: 28x28 real digits leave room for crops); training
images become two random views each (`vitlab.data.views`: the SimCLR recipe on natural images, the small-image
recipe without flips on digits). Evaluation (every `--eval-every` epochs) embeds the un-augmented training split as
the reference set and the test split as queries (`engine.evaluators.knn`).

Model: any registered classifier with one head, built headless; the projection head takes the classifier's place
(`methods.simclr`). Optimiser: AdamW with warm-up + cosine, not the paper's LARS, which pays off only at the paper's
batch sizes of 256..8192 (SimCLR sec. B.1); at the small batches here Adam is the usual choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from vitlab.data import DataSplits, ImageTransform, load_data
from vitlab.data.batches import collate_features, collate_views
from vitlab.data.views import MultiViewDataset, ViewAugment
from vitlab.engine.evaluators.knn import KNN_K, KNN_T, BankAndQueries, RepresentationEvaluator, RepresentationResult
from vitlab.engine.report import Section, new_figure, table
from vitlab.engine.tasks.base import Task, TaskConfig
from vitlab.errors import ConfigError, DataError
from vitlab.methods.simclr import SUPCON_LOSSES, SimCLR, SupervisedContrastive, attach_projection_head


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


def collate_ssl(samples):
    """Training samples are lists of views (-> MultiViewBatch); evaluation samples are single images tagged with
    their role (-> FeatureBatch)."""
    return collate_views(samples) if isinstance(samples[0][0], list | tuple) else collate_features(samples)


@dataclass(frozen=True)
class ContrastiveConfig(TaskConfig):
    proj_dim: int = _f(128, "output width of the projection head (SimCLR: 128)")
    proj_hidden: int = _f(0, "hidden width of the 2-layer projection head; 0 = the encoder's width (SimCLR)")
    knn_k: int = _f(KNN_K, "neighbours of the k-NN evaluation (DINO: 20)")
    knn_temperature: float = _f(KNN_T, "temperature of the k-NN votes' weights exp(cos / T) (DINO: 0.07)")
    no_probe: bool = _f(False, "skip the linear probe in evaluation (k-NN only)")

    def __post_init__(self) -> None:
        if self.proj_dim < 1 or self.proj_hidden < 0:
            raise ConfigError(
                f"--proj-dim must be >= 1 and --proj-hidden >= 0, got {self.proj_dim}, {self.proj_hidden}"
            )
        if self.knn_k < 1:
            raise ConfigError(f"--knn-k must be >= 1, got {self.knn_k}")
        if not (math.isfinite(self.knn_temperature) and self.knn_temperature > 0):
            raise ConfigError(f"--knn-temperature must be > 0, got {self.knn_temperature}")


@dataclass(frozen=True)
class SimCLRConfig(ContrastiveConfig):
    # SimCLR's ImageNet optimum is 0.1 (Table 5); its CIFAR-10 runs use 0.5 (Appendix B.9), the small-image default
    temperature: float = _f(0.5, "NT-Xent temperature tau (SimCLR: 0.5 on CIFAR-10, 0.1 on ImageNet)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"--temperature must be > 0, got {self.temperature}")


@dataclass(frozen=True)
class SupConConfig(ContrastiveConfig):
    loss: str = _f("supcon", "supcon (Khosla et al., L_out) or triplet (batch-hard, Hermans et al.)")
    temperature: float = _f(0.1, "SupCon temperature tau (Khosla et al.: 0.1)")
    margin: float = _f(0.2, "triplet margin on unit-norm projections (FaceNet: 0.2)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in SUPCON_LOSSES:
            raise ConfigError(f"--loss must be one of {', '.join(SUPCON_LOSSES)}, got {self.loss!r}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"--temperature must be > 0, got {self.temperature}")
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ConfigError(f"--margin must be >= 0, got {self.margin}")


class ContrastiveTask(Task):
    """What SimCLR and SupCon share: two-view data, a headless encoder with a projection head, k-NN + probe."""

    config_cls = ContrastiveConfig
    collate = staticmethod(collate_ssl)
    default_data = "mnist5k"
    default_model = "vit_micro_patch4_16"  # 4 blocks of width 64, 16 tokens: digits resized to 16x16 (a CPU budget)
    model_kind = "classifier"
    # AdamW (not LARS: see the module docstring); the paper's weight decay 1e-6 is for LARS, ViTs take 0.05
    run_defaults = {"lr": 1e-3, "min_lr": 1e-5, "weight_decay": 0.05, "batch_size": 256, "epochs": 30,
                    "warmup_epochs": 2.0, "clip_grad": 3.0}  # fmt: skip

    def load_data(self, spec: str, test_fraction: float, tcfg) -> DataSplits:
        splits = load_data(spec, test_fraction)
        if len(splits.classes) < 2:
            raise DataError(f"--data {spec}: k-NN and probe evaluation need at least 2 classes, found {splits.classes}")
        return splits

    def model_kwargs(self, splits: DataSplits, tcfg) -> dict:
        return {"num_classes": 0}  # headless: the projection head is attached in prepare_model

    def prepare_model(self, model: nn.Module, tcfg: ContrastiveConfig) -> None:
        attach_projection_head(model, tcfg.proj_dim, tcfg.proj_hidden)

    def check_model(self, model: nn.Module, splits: DataSplits, where: str) -> None:
        if not hasattr(model, "forward_head"):
            raise ConfigError(f"{getattr(model, 'model_name', type(model).__name__)} has no pooled image features")

    def datasets(self, splits: DataSplits, model: nn.Module, augment: bool, tcfg):
        view = ViewAugment.for_model(model, splits.natural_images) if augment else ImageTransform.for_model(model)
        train = MultiViewDataset(splits.train, [view, view])
        return train, BankAndQueries(splits.train, splits.test, ImageTransform.for_model(model))

    def build_evaluator(self, splits: DataSplits, tcfg: ContrastiveConfig) -> RepresentationEvaluator:
        return RepresentationEvaluator(len(splits.classes), tcfg.knn_k, tcfg.knn_temperature, probe=not tcfg.no_probe)

    def report_sections(self, result: RepresentationResult, splits: DataSplits) -> list[Section]:
        return representation_sections(result, list(splits.classes))

    def summary_lines(self, result: RepresentationResult, evaluator, splits: DataSplits) -> list[str]:
        return representation_summary(result)


class SimCLRTask(ContrastiveTask):
    name = "simclr"
    help = "SimCLR contrastive pre-training (no labels): NT-Xent on two views, k-NN and linear-probe accuracy"
    config_cls = SimCLRConfig

    def build_method(self, tcfg: SimCLRConfig, splits: DataSplits, device: torch.device) -> SimCLR:
        return SimCLR(tcfg.temperature)


class SupConTask(ContrastiveTask):
    name = "supcon"
    help = "supervised contrastive pre-training (SupCon, or batch-hard triplet): k-NN and linear-probe accuracy"
    config_cls = SupConConfig
    # Measured on mnist5k (README): at batch 256 a run sat at the uniform loss log(2B - 1) through epochs 4-10
    # (the projections collapsed); at batch 64, four times the steps, it learned from the start.
    run_defaults = {**ContrastiveTask.run_defaults, "batch_size": 64}

    def build_method(self, tcfg: SupConConfig, splits: DataSplits, device: torch.device) -> SupervisedContrastive:
        return SupervisedContrastive(tcfg.loss, tcfg.temperature, tcfg.margin)


def representation_summary(result: RepresentationResult) -> list[str]:
    probe = "" if math.isnan(result.probe_top1) else f"  linear-probe top-1 {result.probe_top1:.4f}"
    return [
        f"k-NN top-1 {result.knn_top1:.4f} (k={result.k}, T={result.temperature}){probe}  "
        f"({result.bank} reference / {result.count} test images)"
    ]


def representation_sections(result: RepresentationResult, classes: list[str]) -> list[Section]:
    rows = [("k-NN top-1", f"{result.knn_top1:.4f}"), ("k, temperature", f"{result.k}, {result.temperature}")]
    if not math.isnan(result.probe_top1):
        rows.append(("linear-probe top-1 (logistic regression)", f"{result.probe_top1:.4f}"))
    rows.append(("reference / test images", f"{result.bank} / {result.count}"))
    fig = new_figure(max(4.0, 0.5 * len(classes) + 1.5), 3.2)
    ax = fig.subplots()
    ax.bar(range(len(classes)), result.per_class_knn)
    ax.set_xticks(range(len(classes)), classes, rotation=90 if len(classes) > 10 else 0)
    ax.set(ylim=(0, 1.02), ylabel="k-NN accuracy", title="k-NN accuracy per class")
    ax.grid(alpha=0.3, axis="y")
    return [Section("Frozen-feature evaluation", table(("metric", "value"), rows), {"knn_per_class.png": fig})]
