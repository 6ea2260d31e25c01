"""DINO self-supervised pre-training: multi-crop views, student + EMA teacher, k-NN on the teacher's features.

`vitlab train --task dino --model NAME --data SPEC`: any registered encoder (a ViT is rebuilt with
`dynamic_img_size`, so the local crops' smaller size fits its position table) and any image data spec; the labels
are ignored in training and used only by the k-NN evaluation. The collapse monitor (teacher entropy and
KL(teacher || student), DINO sec. 5.3) is logged for every epoch and plotted in the report.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from vitlab.data import DataSplits, load_data
from vitlab.data.multicrop import MultiCrop, MultiCropDataset, collate_multicrop
from vitlab.data.transforms import ImageTransform
from vitlab.engine.evaluators.dino import DinoEvaluator, DinoResult
from vitlab.engine.report import Section, new_figure, table
from vitlab.engine.tasks.base import Task, TaskConfig
from vitlab.errors import ConfigError
from vitlab.methods.dino import Dino, DinoModel


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class DinoTaskConfig(TaskConfig):
    out_dim: int = _f(4096, "prototypes K of the DINO head (the paper: 65536; small data needs fewer)")
    hidden_dim: int = _f(2048, "hidden width of the head's 3-layer MLP")
    bottleneck_dim: int = _f(256, "bottleneck before the weight-normalised last layer")
    local_crops: int = _f(6, "local crops per image (student only); the 2 global crops are always there")
    local_size: int | None = _f(
        None, "side of the local crops (default: 96/224 of the model's input, a patch multiple)"
    )
    global_scale_min: float = _f(0.4, "smallest area fraction of a global crop (the repository's default: 0.4)")
    local_scale_max: float = _f(0.4, "largest area fraction of a local crop (from 0.05; the global crops start here)")
    student_temp: float = _f(0.1, "student softmax temperature")
    teacher_temp: float = _f(0.07, "teacher temperature after the warm-up")
    warmup_teacher_temp: float = _f(0.04, "teacher temperature at the first epoch")
    warmup_teacher_temp_epochs: int | None = _f(None, "epochs of the linear warm-up (default: 30 percent of --epochs)")
    momentum_teacher: float = _f(0.996, "teacher EMA momentum at the start (cosine to 1)")
    center_momentum: float = _f(0.9, "EMA momentum of the center")
    freeze_last_layer: int = _f(1, "epochs during which the head's last layer is not updated")

    def __post_init__(self) -> None:
        for name in ("out_dim", "hidden_dim", "bottleneck_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.local_crops < 0:
            raise ConfigError(f"--local-crops must be >= 0, got {self.local_crops}")
        if self.local_size is not None and self.local_size < 1:
            raise ConfigError(f"--local-size must be >= 1, got {self.local_size}")
        if not 0 < self.global_scale_min <= 1 or not 0.05 < self.local_scale_max <= 1:
            raise ConfigError(f"--global-scale-min must be in (0, 1] and --local-scale-max in (0.05, 1], got "
                              f"{self.global_scale_min} and {self.local_scale_max}")  # fmt: skip
        for name in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {v}")
        for name in ("momentum_teacher", "center_momentum"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}")
        if self.warmup_teacher_temp_epochs is not None and self.warmup_teacher_temp_epochs < 1:
            raise ConfigError(f"--warmup-teacher-temp-epochs must be >= 1, got {self.warmup_teacher_temp_epochs}")
        if self.freeze_last_layer < 0:
            raise ConfigError(f"--freeze-last-layer must be >= 0, got {self.freeze_last_layer}")


def _any_size(model: nn.Module) -> nn.Module:
    """The encoder rebuilt to take any multiple of its patch (a ViT's table resized per input), weights kept."""
    if not getattr(model, "fixed_input_size", False):
        return model
    if "dynamic_img_size" not in {f.name for f in dataclasses.fields(model.cfg)}:
        raise ConfigError(
            f"--task dino feeds local crops smaller than the global ones, and {model.model_name} takes "
            f"{model.cfg.img_size}x{model.cfg.img_size} images only; use a ViT or a CNN"
        )
    rebuilt = type(model)(dataclasses.replace(model.cfg, dynamic_img_size=True))
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.model_name = model.model_name
    return rebuilt


class DinoTask(Task):
    name = "dino"
    help = "self-supervised DINO (student + EMA teacher, multi-crop): k-NN accuracy of the teacher, collapse monitor"
    config_cls = DinoTaskConfig
    collate = staticmethod(collate_multicrop)
    default_model = "vit_micro_patch4_16"  # the digits upsampled to 16 px leave room for 8 px local crops
    # DINO's AdamW recipe (lr 5e-4 x batch/256 with warm-up, wd 0.04, clip 3) at a CPU-sized batch
    run_defaults = {"lr": 5e-4, "min_lr": 1e-6, "weight_decay": 0.04, "clip_grad": 3.0, "batch_size": 64,
                    "epochs": 30, "warmup_epochs": 3.0}  # fmt: skip

    def load_data(self, spec: str, test_fraction: float, tcfg: DinoTaskConfig) -> DataSplits:
        return load_data(spec, test_fraction)  # labels are kept for the k-NN evaluation only

    def model_kwargs(self, splits: DataSplits, tcfg: DinoTaskConfig) -> dict:
        return {"num_classes": 0}  # the DINO head replaces the classifier

    def wrap_model(self, model: nn.Module, tcfg: DinoTaskConfig) -> nn.Module:
        if isinstance(model, DinoModel):
            return model
        return DinoModel(_any_size(model), tcfg.out_dim, tcfg.hidden_dim, tcfg.bottleneck_dim)

    def check_model(self, model: nn.Module, splits: DataSplits, where: str) -> None:
        """Any encoder can be judged by k-NN on its features (a DINO run reads as its teacher)."""
        if not hasattr(model, "forward_head"):
            raise ConfigError(f"{where}: {type(model).__name__} has no pooled features (forward_head) for k-NN")

    def local_size(self, encoder: nn.Module, tcfg: DinoTaskConfig) -> int:
        if tcfg.local_size is not None:
            return tcfg.local_size
        p = getattr(encoder, "patch_size", 1)
        p = p if isinstance(p, int) else 1
        return max(p, round(encoder.cfg.img_size * 96 / 224 / p) * p)

    def datasets(self, splits: DataSplits, model: nn.Module, augment: bool, tcfg: DinoTaskConfig):
        enc = model.encoder if isinstance(model, DinoModel) else model
        cfg = enc.cfg
        crops = MultiCrop(
            cfg.img_size, self.local_size(enc, tcfg), tcfg.local_crops, cfg.in_chans, tuple(cfg.mean), tuple(cfg.std),
            global_scale=(tcfg.global_scale_min, 1.0), local_scale=(0.05, tcfg.local_scale_max),
            hflip=splits.natural_images,
        )  # fmt: skip
        test_tf = ImageTransform.for_model(enc)
        return MultiCropDataset(splits.train, crops), MultiCropDataset(splits.test, test_tf)

    def build_method(self, tcfg: DinoTaskConfig, splits: DataSplits, device: torch.device) -> Dino:
        return Dino(
            student_temp=tcfg.student_temp, teacher_temp=tcfg.teacher_temp,
            warmup_teacher_temp=tcfg.warmup_teacher_temp, warmup_teacher_temp_epochs=tcfg.warmup_teacher_temp_epochs,
            center_momentum=tcfg.center_momentum, momentum_teacher=tcfg.momentum_teacher,
            freeze_last_layer=tcfg.freeze_last_layer,
        )  # fmt: skip

    def build_evaluator(self, splits: DataSplits, tcfg: DinoTaskConfig) -> DinoEvaluator:
        return DinoEvaluator(splits.train, len(splits.classes))

    def history_sections(self, metrics: list[dict]) -> list[Section]:
        rows = [m for m in metrics if "train_teacher_entropy" in m]
        if not rows:
            return []
        fig = new_figure(9.0, 3.2)
        ax_h, ax_kl = fig.subplots(1, 2)
        epochs = [m["epoch"] for m in rows]
        ax_h.plot(epochs, [m["train_teacher_entropy"] for m in rows], marker="o")
        ax_h.set(xlabel="epoch", ylabel="nats", title="teacher entropy (log K: uniform collapse, 0: one prototype)")
        ax_kl.plot(epochs, [m["train_kl"] for m in rows], marker="o", color="tab:orange")
        ax_kl.set(xlabel="epoch", ylabel="nats", title="KL(teacher || student)")
        for ax in (ax_h, ax_kl):
            ax.grid(alpha=0.3)
        lines = table(
            ("epoch", "teacher entropy / KL"),
            [(m["epoch"], f"{m['train_teacher_entropy']:.4f} / {m['train_kl']:.4f}") for m in rows],
        )
        return [Section("Collapse monitor (DINO sec. 5.3)", lines, {"collapse.png": fig})]

    def report_sections(self, result: DinoResult, splits: DataSplits) -> list[Section]:
        return [Section("k-NN evaluation", table(("metric", "value"), [("k-NN top-1 (k=20, T=0.07)",
                                                                          f"{result.knn_top1:.4f}")]))]  # fmt: skip

    def summary_lines(self, result: DinoResult, evaluator, splits: DataSplits) -> list[str]:
        return [f"k-NN top-1 (teacher, k=20) {result.knn_top1:.4f} on {result.count} test images"]


def load_dino_encoder(path: str, which: str = "teacher") -> nn.Module:
    """The teacher's (or the student's) encoder of a DINO run or checkpoint; CheckpointError for anything else.

    (`load_checkpoint` / `create_model(pretrained=...)` read a DINO run as its teacher already.)
    """
    import json
    from pathlib import Path

    from vitlab.errors import CheckpointError
    from vitlab.factory import create_model
    from vitlab.weights import CHECKPOINT_FILE
    from vitlab.weights.dino import DINO_MODEL_NAME, dino_encoder
    from vitlab.weights.io import read_tensors

    file = Path(path) / CHECKPOINT_FILE if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise CheckpointError(f"{path}: no DINO checkpoint ({file} is missing)")
    state, meta = read_tensors(file)
    if meta.get("model") != DINO_MODEL_NAME:
        raise CheckpointError(f"{path} is not a DINO run or checkpoint (it holds {meta.get('model') or 'weights'})")
    weights, config, name = dino_encoder(state, json.loads(meta.get("config", "{}")), str(file), which)
    model = create_model(name, **config)
    model.load_state_dict(weights)
    return model
