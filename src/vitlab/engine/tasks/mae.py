"""Masked-autoencoder pre-training (He et al., arXiv 2111.06377): `vitlab train --task mae --model mae_* --data SPEC`.

Any image data spec (`vitlab.data.load_data`: digits, mnist:DIR, cifar10:DIR, an image folder, ...); labels are
not used. The recipe is the paper's (sec. A.1, Table 8): AdamW with betas (0.9, 0.95), weight decay 0.05, base
learning rate 1.5e-4 scaled by batch / 256 (the effective batch: --batch-size x --accum-steps x processes), linear
warm-up then cosine, no gradient clipping, 75% masking. Epochs are CPU-sized (the paper trains 800-1600).
The report draws original | masked | reconstruction for test images; `vitlab train --pretrained RUN --model ENCODER
--data SPEC` fine-tunes the encoder as a classifier (the factory loads an MAE checkpoint's encoder part).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from vitlab.data import DataSplits, load_data
from vitlab.data.batches import collate_images
from vitlab.engine.evaluators.mae import SHOWN, MaeEvaluator, MaeResult
from vitlab.engine.report import Section, new_figure, table
from vitlab.engine.tasks.base import Task, TaskConfig
from vitlab.errors import ConfigError
from vitlab.explain.mae import draw_reconstruction
from vitlab.methods.mae import MaskedImageModelling

BASE_LR = 1.5e-4  # per 256 images (MAE Table 8: blr 1.5e-4, lr = blr * batch / 256)


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class MaeTaskConfig(TaskConfig):
    mask_ratio: float = _f(0.75, "share of each image's patches masked (MAE Fig. 5: 0.75)")
    norm_pix_loss: bool = _f(False, "reconstruct per-patch normalised pixels (MAE Table 1d; better features with "
                                    "16x16 patches, noisy for the 2x2 / 4x4 patches of the CPU sizes)")  # fmt: skip

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mask_ratio) and 0 <= self.mask_ratio < 1):
            raise ConfigError(f"--mask-ratio must be in [0, 1), got {self.mask_ratio}")


class MaeTask(Task):
    name = "mae"
    help = "masked-autoencoder pre-training (MAE): pixels of 75% masked patches, labels unused"
    config_cls = MaeTaskConfig
    collate = staticmethod(collate_images)
    default_model = "mae_vit_micro_patch2_8"
    model_kind = "mae"
    adam_betas = (0.9, 0.95)  # MAE Table 8
    run_defaults = {"batch_size": 128, "lr": BASE_LR * 128 / 256, "epochs": 40, "warmup_epochs": 2.0,
                    "weight_decay": 0.05, "min_lr": 0.0,
                    "clip_grad": 0.0}  # fmt: skip

    def run_defaults_for(self, cfg) -> dict:
        """The learning rate follows the batch: 1.5e-4 x effective batch / 256 unless --lr is given."""
        batch = cfg.batch_size or self.run_defaults["batch_size"]
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return {**self.run_defaults, "lr": BASE_LR * batch * cfg.accum_steps * world / 256}

    def load_data(self, spec: str, test_fraction: float, tcfg: MaeTaskConfig) -> DataSplits:
        return load_data(spec, test_fraction)

    def model_kwargs(self, splits: DataSplits, tcfg: MaeTaskConfig) -> dict:
        return {"mask_ratio": tcfg.mask_ratio, "norm_pix_loss": tcfg.norm_pix_loss}

    def check_model(self, model: nn.Module, splits: DataSplits, where: str) -> None:
        if not hasattr(model, "forward_decoder"):
            raise ConfigError(f"{getattr(model, 'model_name', type(model).__name__)} is not a masked autoencoder")

    def build_method(self, tcfg: MaeTaskConfig, splits: DataSplits, device: torch.device) -> MaskedImageModelling:
        return MaskedImageModelling()

    def build_evaluator(self, splits: DataSplits, tcfg: MaeTaskConfig) -> MaeEvaluator:
        return MaeEvaluator()

    def report_sections(self, result: MaeResult, splits: DataSplits) -> list[Section]:
        rows = [("masked-patch MSE", f"{result.loss:.4f}"), ("visible-patch MSE", f"{result.loss_visible:.4f}")]
        sections = [Section("Reconstruction loss on the test split (fixed masks)", table(("metric", "value"), rows))]
        if result.samples is not None:
            n = len(result.samples.original)
            fig = new_figure(4.5, 1.5 * n)
            draw_reconstruction(fig, result.samples)
            lines = [f"The first {min(n, SHOWN)} test images: original | masked | reconstruction (the prediction on "
                     "the masked patches, the visible ones pasted back)."]  # fmt: skip
            sections.append(Section("Reconstructions", lines, {"reconstruction.png": fig}))
        return sections

    def summary_lines(self, result: MaeResult, evaluator, splits: DataSplits) -> list[str]:
        return [f"masked-patch MSE {result.loss:.4f}  visible-patch MSE {result.loss_visible:.4f}  "
                f"({result.count} test images)"]  # fmt: skip
