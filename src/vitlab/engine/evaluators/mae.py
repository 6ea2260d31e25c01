"""Masked autoencoders: the reconstruction loss on the masked patches of the test split, the same masks every time.

The masks come from a generator seeded afresh at each evaluation (one noise draw per batch, in order), so epochs
and checkpoints are compared on the same masked patches. The first images are kept, with their masks and
reconstructions, for the report's picture.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from vitlab.data.batches import ImageBatch
from vitlab.engine.evaluators.base import Evaluator
from vitlab.explain.mae import Reconstruction, mae_reconstruction
from vitlab.losses.mae import masked_mse

SHOWN = 8  # test images drawn in the report


@dataclass
class MaeResult:
    count: int
    loss: float  # mean over images of the masked-patch MSE (the training loss, in its target space)
    loss_visible: float  # the same on the visible patches: how well the decoder copies what the encoder saw
    samples: Reconstruction | None = field(default=None, repr=False)

    @property
    def metrics(self) -> dict[str, float]:
        return {"loss": self.loss, "loss_visible": self.loss_visible}

    def details(self) -> dict:
        return {"count": self.count, **self.metrics}


class MaeEvaluator(Evaluator):
    primary = "loss"
    higher_is_better = False
    metric_labels = {"loss": "masked-patch MSE", "loss_visible": "visible-patch MSE"}

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)
        self.sums = {"loss": 0.0, "loss_visible": 0.0}
        self.count = 0
        self.samples: Reconstruction | None = None

    def update(self, model: nn.Module, batch: ImageBatch) -> None:
        x = batch.images
        B = x.shape[0]
        noise = torch.rand(B, model.num_patches, generator=self.generator).to(x.device)
        out = model(x, noise)
        target = model.target(x)
        self.sums["loss"] += masked_mse(pred=out.pred, target=target, mask=out.mask).item() * B
        self.sums["loss_visible"] += masked_mse(pred=out.pred, target=target, mask=1 - out.mask).item() * B
        self.count += B
        if self.samples is None:
            self.samples = mae_reconstruction(model, x[:SHOWN], noise[:SHOWN])

    def compute(self) -> MaeResult:
        n = max(self.count, 1)
        return MaeResult(self.count, self.sums["loss"] / n, self.sums["loss_visible"] / n, self.samples)
