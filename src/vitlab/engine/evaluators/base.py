"""The evaluator interface, and the one evaluation loop every task shares.

An evaluator sees the model and each test batch (`update`), and returns a result (`compute`) whose `metrics` are
scalars by name; `primary` names the one that picks the best checkpoint, heads the report and `vitlab eval`'s line.
`batch_stats` gives per-batch sums of the metrics worth tracking on training batches (the outputs of the method's
step, so no second forward pass), which the engine sums over ranks and divides by the number of samples.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class EvalResult(Protocol):
    count: int  # evaluated samples

    @property
    def metrics(self) -> dict[str, float]: ...

    def details(self) -> dict:
        """Everything worth keeping as JSON (final_metrics.json): the metrics plus per-class figures."""
        ...


class Evaluator:
    primary: str = ""  # the metric name that ranks checkpoints
    higher_is_better: bool = True
    metric_labels: dict[str, str] = {}  # display names for plots and tables, e.g. {"acc": "top-1 accuracy"}
    curve_metrics: tuple[str, ...] = ()  # test metrics drawn beside the primary in the report's training curves

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, model: nn.Module, batch) -> None:
        raise NotImplementedError

    def compute(self) -> EvalResult:
        raise NotImplementedError

    def batch_stats(self, outputs: dict[str, torch.Tensor], batch) -> dict[str, float]:
        return {}

    def must_be_finite(self) -> set[str]:
        """Metrics that are never NaN for a sane model (`vitlab eval` reports a NaN among them as a broken model)."""
        return set(self.metric_labels) | {self.primary}

    def label(self, metric: str) -> str:
        return self.metric_labels.get(metric, metric)

    def better(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value > best if self.higher_is_better else value < best


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, evaluator: Evaluator, device: torch.device, bf16: bool = False, progress: bool = False
) -> EvalResult:
    """Run `evaluator` over `loader` in eval mode (the model's train/eval mode is restored afterwards)."""
    was_training = model.training
    model.eval()
    evaluator.reset()
    it = loader
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(loader, desc="eval", leave=False, unit="batch")
    try:
        for batch in it:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                evaluator.update(model, batch.to(device))
    finally:
        model.train(was_training)
    return evaluator.compute()
