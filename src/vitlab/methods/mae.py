"""Masked-autoencoder pre-training (He et al., arXiv 2111.06377): one loss, the MSE on the masked patches' pixels.

The model masks, encodes and decodes (`vitlab.models.mae`); the target is its own `target(images)`: the patches'
pixels, or per-patch normalised pixels when the model was built with `norm_pix_loss`. Labels are not read.
"""

from __future__ import annotations

from torch import nn

from vitlab.data.batches import ImageBatch
from vitlab.losses.mae import masked_mse
from vitlab.methods.base import Method, StepOutput


class MaskedImageModelling(Method):
    loss_weights = {"loss_mae": 1.0}

    def step(self, model: nn.Module, batch: ImageBatch) -> StepOutput:
        out = model(batch.images)
        bare = getattr(model, "module", model)  # DDP's wrapped model has the target function
        loss = masked_mse(pred=out.pred, target=bare.target(batch.images), mask=out.mask)
        return StepOutput({"loss_mae": loss}, {"mask": out.mask})
