"""CLIP's image-text contrastive training: both towers, one symmetric InfoNCE (or SigLIP's sigmoid) loss per batch.

Under DDP the negatives come from every process (`gather=True`; without a process group the gather is the identity).
LiT (Zhai et al., arXiv 2111.07991) locks one tower: the task freezes its parameters; the loss is unchanged.
"""

from __future__ import annotations

from torch import nn

from vitlab.data.batches import CaptionBatch
from vitlab.losses.contrastive import clip_loss, siglip_loss
from vitlab.methods.base import Method, StepOutput

LOSSES = ("infonce", "siglip")


class ImageTextContrastive(Method):
    """`loss_infonce` or `loss_siglip`; the outputs carry the logits and the temperature's scale exp(t) for logging."""

    def __init__(self, loss: str = "infonce") -> None:
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        self.loss = loss
        self.loss_weights = {f"loss_{loss}": 1.0}

    def step(self, model: nn.Module, batch: CaptionBatch) -> StepOutput:
        out = model(batch.images, batch.input_ids)
        bare = getattr(model, "module", model)  # DDP's wrapped model holds the temperature and bias
        scale = bare.scale()
        kw = dict(image_embeds=out.image_embeds, text_embeds=out.text_embeds, logit_scale=scale, gather=True)
        if self.loss == "siglip":
            if not hasattr(bare, "logit_bias"):
                raise ValueError("--loss siglip needs a model with a logit bias (built with logit_bias_init)")
            value = siglip_loss(**kw, logit_bias=bare.logit_bias)
        else:
            value = clip_loss(**kw)
        outputs = {"logits_per_image": out.logits_per_image, "logit_scale": scale.detach()}
        return StepOutput({f"loss_{self.loss}": value}, outputs)
