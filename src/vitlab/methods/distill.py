"""Knowledge distillation from a frozen teacher (DeiT, arXiv 2012.12877).

A distilled DeiT trains its class head on the labels and its distillation head on the teacher; any other model
applies both terms to its single head (the paper's "usual distillation").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.errors import ConfigError
from vitlab.losses import distillation_loss


class Distillation:
    def __init__(
        self, teacher: nn.Module, kind: str = "hard", alpha: float = 0.5, tau: float = 1.0, label_smoothing: float = 0.0
    ) -> None:
        if kind not in ("hard", "soft"):
            raise ConfigError(f"--distill must be 'hard' or 'soft', got {kind!r}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.kind, self.alpha, self.tau, self.label_smoothing = kind, alpha, tau, label_smoothing
        t_cfg = getattr(teacher, "cfg", None)
        self.teacher_size = getattr(t_cfg, "img_size", None)

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        if self.teacher_size and images.shape[-1] != self.teacher_size:
            images = F.interpolate(images, size=(self.teacher_size,) * 2, mode="bicubic", align_corners=False)
        with torch.no_grad():
            return self.teacher(images)

    def __call__(
        self, model: nn.Module, images: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        teacher = self.teacher_logits(images)
        bare = getattr(model, "module", model)  # DistributedDataParallel keeps the model in .module
        if getattr(bare, "head_dist", None) is not None:
            out = model(images, distill=True)  # through the wrapper, so that gradients are synchronised
            cls, dist, logits = out.cls, out.dist, out.mean()
        else:
            cls = dist = logits = model(images)
        loss = distillation_loss(
            cls_logits=cls,
            dist_logits=dist,
            target=target,
            teacher_logits=teacher,
            kind=self.kind,
            alpha=self.alpha,
            tau=self.tau,
            label_smoothing=self.label_smoothing,
        )
        return loss, logits
