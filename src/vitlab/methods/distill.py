"""Knowledge distillation from a frozen teacher (DeiT, arXiv 2012.12877, sec. 5).

A distilled DeiT trains its class head on the labels and its distillation head on the teacher; any other model
applies both terms to its single head (the paper's "usual distillation"). Losses: "ce" (labels) and "kd" (teacher),
weighted 1 - alpha and alpha.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.data.batches import ImageBatch
from vitlab.errors import ConfigError
from vitlab.losses import cross_entropy, distillation_kd
from vitlab.methods.base import StepOutput
from vitlab.methods.supervised import Supervised
from vitlab.models.outputs import DistilledLogits


class DistilledForward(nn.Module):
    """`forward` = the student's `forward_distill`: both DeiT heads, through any wrapper (DDP) that calls forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> DistilledLogits:
        return self.model.forward_distill(x)


class Distillation(Supervised):
    def __init__(
        self,
        teacher: nn.Module,
        num_classes: int,
        kind: str = "hard",
        alpha: float = 0.5,
        tau: float = 1.0,
        label_smoothing: float = 0.0,
        mixup: float = 0.0,
        cutmix: float = 0.0,
    ) -> None:
        if kind not in ("hard", "soft"):
            raise ConfigError(f"--distill must be 'hard' or 'soft', got {kind!r}")
        if not 0 <= alpha <= 1:
            raise ConfigError(f"--alpha must be in [0, 1], got {alpha}")
        super().__init__(num_classes, label_smoothing, mixup, cutmix)
        self.teacher = teacher.eval().requires_grad_(False)
        self.kind, self.alpha, self.tau = kind, alpha, tau
        self.loss_weights = {"ce": 1 - alpha, "kd": alpha}
        self.teacher_size = getattr(getattr(teacher, "cfg", None), "img_size", None)

    def train_module(self, model: nn.Module) -> nn.Module:
        return DistilledForward(model) if getattr(model, "head_dist", None) is not None else model

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        if self.teacher_size and images.shape[-1] != self.teacher_size:
            images = F.interpolate(images, size=(self.teacher_size,) * 2, mode="bicubic", align_corners=False)
        with torch.no_grad():
            return self.teacher(images)

    def step(self, model: nn.Module, batch: ImageBatch) -> StepOutput:
        teacher = self.teacher_logits(batch.images)
        out = model(batch.images)
        if isinstance(out, DistilledLogits):
            cls, dist, logits = out.cls, out.dist, out.mean()
        else:
            cls = dist = logits = out
        losses = {
            "ce": cross_entropy(logits=cls, target=self.loss_target(batch), label_smoothing=self.label_smoothing),
            "kd": distillation_kd(dist_logits=dist, teacher_logits=teacher, kind=self.kind, tau=self.tau),
        }
        return StepOutput(losses, {"logits": logits})
