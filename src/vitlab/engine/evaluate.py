"""Evaluation: loss, top-1 / top-5, per-class accuracy and the confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    per_class: list[float]  # accuracy per class (nan where the class has no sample)
    confusion: list[list[int]]  # confusion[true][predicted]
    count: int

    def summary(self) -> dict:
        return {"loss": self.loss, "top1": self.top1, "top5": self.top5}


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, num_classes: int, device: torch.device, bf16: bool = False, progress: bool = False
) -> EvalResult:
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    total_loss, correct5, n = 0.0, 0, 0
    it = loader
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(loader, desc="eval", leave=False, unit="batch")
    for images, labels in it:
        images, labels = images.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(images)
        logits = logits.float()
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        k = min(5, num_classes)
        correct5 += (logits.topk(k, dim=-1).indices == labels[:, None]).any(dim=-1).sum().item()
        pred = logits.argmax(dim=-1)
        confusion += torch.bincount(labels.cpu() * num_classes + pred.cpu(), minlength=num_classes**2).view(
            num_classes, num_classes
        )
        n += labels.numel()
    if n == 0:
        raise ValueError("evaluation set is empty")
    support = confusion.sum(dim=1)
    per_class = (confusion.diag().float() / support.clamp(min=1)).tolist()
    per_class = [a if s > 0 else float("nan") for a, s in zip(per_class, support.tolist(), strict=True)]
    return EvalResult(
        loss=total_loss / n,
        top1=confusion.diag().sum().item() / n,
        top5=correct5 / n,
        per_class=per_class,
        confusion=confusion.tolist(),
        count=n,
    )
