"""Run-level training configuration: every field is a flag of `vitlab train` (the help text is the why).

What a task needs beyond these (label smoothing, a teacher, ...) lives in that task's own config dataclass
(`vitlab.engine.tasks`), given as `task_cfg`; its flags appear only under `vitlab train --task NAME`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from vitlab.errors import ConfigError


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


# Run flags a task may start from values of its own (`Task.run_defaults`): a TrainConfig holds None for a flag not
# given, and `resolve_run_defaults` fills in the task's value, else these. (A value equal to a default is then still
# the user's: `--epochs 60` on a task whose default is 30 trains 60 epochs.)
RUN_DEFAULTS: dict[str, float | int] = {
    "epochs": 60,
    "batch_size": 64,
    "lr": 2e-3,
    "min_lr": 1e-5,
    "warmup_epochs": 3.0,
    "weight_decay": 0.05,
    "clip_grad": 1.0,
}


def _run(help: str):
    """A run flag whose default is the task's (RUN_DEFAULTS when the task sets none)."""
    return field(default=None, metadata={"help": help, "run_default": True})


@dataclass(frozen=True)
class TrainConfig:
    task: str = _f("classification", "what to train (see the list above); each task has flags of its own")
    model: str | None = _f(None, "registered model name (`vitlab models` lists them); default the task's: "
                                 "vit_micro_patch4_8, detection: detr_tiny")  # fmt: skip
    data: str | None = _f(None, "data spec (default: the task's embedded set, digits; detection: shapes): digits | "
                                "mnist5k | cifar10:DIR | cifar100:DIR | mnist:DIR | an ImageFolder DIR | "
                                "coco:ROOT")  # fmt: skip
    out: str = _f("runs/train", "run directory: config, metrics, checkpoints, report")
    epochs: int | None = _run("training epochs")
    batch_size: int | None = _run("images per batch")
    lr: float | None = _run("peak AdamW learning rate, reached after warm-up")
    min_lr: float | None = _run("learning rate at the end of the cosine decay")
    warmup_epochs: float | None = _run("linear warm-up length (DeiT: 5 of 300 epochs)")
    weight_decay: float | None = _run("AdamW decay; never on norms, biases, position embeddings or tokens")
    img_size: int | None = _f(None, "input side; default the model's, otherwise position embeddings are resampled")
    pretrained: str | None = _f(None, "checkpoint to start from: vitlab run/file, transformers dir, timm file")
    freeze_backbone: bool = _f(False, "train only the new head (transfer learning: feature extractor frozen)")
    unfreeze_epoch: int | None = _f(None, "with --freeze-backbone: fine-tune everything from this epoch on")
    no_augment: bool = _f(False, "no random flips, crops or affine warps (deterministic inputs)")
    drop_path: float | None = _f(None, "stochastic depth rate (default: the model's)")
    ema: bool = _f(False, "keep an exponential moving average of the weights and evaluate it too")
    ema_decay: float = _f(0.998, "EMA decay per optimiser step")
    bf16: bool = _f(False, "bfloat16 autocast for forward and backward")
    grad_checkpointing: bool = _f(False, "recompute block activations in backward: less memory, ~30% more compute")
    fsdp: bool = _f(False, "under torchrun: shard weights, gradients and optimizer state across ranks (FSDP)")
    clip_grad: float | None = _run("max global gradient norm (0 = off)")
    accum_steps: int = _f(1, "gradient accumulation: one optimiser step every N batches")
    seed: int = _f(0, "seed for initialisation, shuffling, augmentation and dropout")
    resume: bool = _f(False, "continue the run in --out from its last completed epoch")
    overwrite: bool = _f(False, "replace the vitlab run in --out (its own files only; other directories are refused)")
    workers: int = _f(0, "DataLoader worker processes")
    device: str = _f("auto", "auto | cpu | cuda")
    test_fraction: float = _f(0.2, "held-out share for data sets without their own test split")
    stop_after: int | None = _f(None, "stop after N epochs in this invocation; --resume continues")
    eval_every: int = _f(1, "evaluate on the test split every N epochs and after the last (k-NN, probes are slow)")
    task_cfg: object = field(default=None, metadata={"cli": False})  # the task's config; None = its defaults

    def __post_init__(self) -> None:
        for name, v in (("epochs", self.epochs), ("batch_size", self.batch_size), ("accum_steps", self.accum_steps)):
            if v is not None and v < 1:
                raise ConfigError(f"{flag(name)} must be >= 1, got {v}")
        for name in [
            "lr",
            "min_lr",
            "warmup_epochs",
            "weight_decay",
            "ema_decay",
            "test_fraction",
            "drop_path",
            "clip_grad",
        ]:
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):  # nan passes every comparison below
                raise ConfigError(f"{flag(name)} must be a finite number, got {v}")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.min_lr is not None and not 0 <= self.min_lr <= (math.inf if self.lr is None else self.lr):
            raise ConfigError(f"--min-lr must be between 0 and --lr ({self.lr}), got {self.min_lr}")
        for name in ("warmup_epochs", "weight_decay", "workers", "seed"):  # numpy's generators refuse negative seeds
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"{flag(name)} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"--test-fraction must be in (0, 1), got {self.test_fraction}")
        if not 0 < self.ema_decay < 1:
            raise ConfigError(f"--ema-decay must be in (0, 1), got {self.ema_decay}")
        if self.drop_path is not None and not 0 <= self.drop_path < 1:
            raise ConfigError(f"--drop-path must be in [0, 1), got {self.drop_path}")
        for name in ("img_size", "stop_after", "eval_every"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{flag(name)} must be >= 1, got {v}")
        if self.unfreeze_epoch is not None:
            if not self.freeze_backbone:
                raise ConfigError("--unfreeze-epoch needs --freeze-backbone")
            if self.epochs is not None and not 1 <= self.unfreeze_epoch <= self.epochs:
                raise ConfigError(f"--unfreeze-epoch must be an epoch from 1 to --epochs ({self.epochs}), "
                                  f"got {self.unfreeze_epoch}")  # fmt: skip
        if self.clip_grad is not None and self.clip_grad < 0:
            raise ConfigError(f"--clip-grad must be >= 0 (0 = off), got {self.clip_grad}")


def resolve_run_defaults(cfg: TrainConfig, task_defaults: dict) -> TrainConfig:
    """`cfg` with each run flag left at None set to the task's starting value, else RUN_DEFAULTS' (checked again:
    --min-lr against a task's --lr, --unfreeze-epoch against its --epochs)."""
    import dataclasses

    unknown = set(task_defaults) - set(RUN_DEFAULTS)
    if unknown:
        raise ValueError(f"run_defaults may set only {', '.join(RUN_DEFAULTS)}, not {', '.join(sorted(unknown))}")
    given = {k: task_defaults.get(k, v) for k, v in RUN_DEFAULTS.items() if getattr(cfg, k) is None}
    return dataclasses.replace(cfg, **given)


def flag(name: str) -> str:
    """The command-line flag of a config field: `min_lr` -> `--min-lr`."""
    return "--" + name.replace("_", "-")
