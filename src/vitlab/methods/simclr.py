"""SimCLR and supervised contrastive training: two views -> encoder -> projection head -> NT-Xent / SupCon / triplet.

SimCLR (Chen et al., arXiv 2002.05709, sec. 2.1): h = f(x) the encoder's pooled representation, z = g(h) =
W2 ReLU(W1 h) the projection (a 2-layer MLP, 128-d output; sec. 4.2 finds it better than none or a linear one), the
loss on z, the representation h kept for downstream use. SupCon (Khosla et al., arXiv 2004.11362) keeps the recipe
and draws positives from the labels.

The projection head takes the place of the encoder's classifier (the attribute `get_classifier_names()` names, as
`reset_classifier` does), so `model(x)` = g(f(x)) goes through the encoder's public forward and DDP wraps one
module, and `forward_head(forward_features(x), pre_logits=True)` is still h. A saved run is the encoder plus its
head: loading it as a classifier drops the head with a warning (SimCLR throws g away after pre-training).
"""

from __future__ import annotations

import torch
from torch import nn

from vitlab.data.batches import MultiViewBatch
from vitlab.errors import ConfigError
from vitlab.losses.selfsup import nt_xent_loss, supcon_loss, triplet_batch_hard_loss
from vitlab.methods.base import Method, StepOutput

SUPCON_LOSSES = ("supcon", "triplet")


class ProjectionHead(nn.Module):
    """g(h) = W2 ReLU(W1 h): SimCLR's non-linear projection (the paper's hidden width equals the input's)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        for fc in (self.fc1, self.fc2):
            nn.init.trunc_normal_(fc.weight, std=0.02)
            nn.init.zeros_(fc.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(h)))  # (B, out_dim)


def attach_projection_head(model: nn.Module, out_dim: int, hidden_dim: int = 0) -> ProjectionHead:
    """Put a ProjectionHead where the encoder's single classifier was (the model must be built headless,
    num_classes=0); hidden_dim 0 = the encoder's feature width. Returns the head."""
    names = model.get_classifier_names()
    name = getattr(model, "model_name", type(model).__name__)
    if len(names) != 1:
        raise ConfigError(f"{name} has {len(names)} classifiers ({', '.join(names)}); a projection head replaces one")
    if getattr(model, "num_classes", 0) != 0:
        raise ConfigError(f"{name} was built with a {model.num_classes}-class head; build it with num_classes=0")
    width = model.head_hidden_size  # the classifier's input: the pooled representation h
    head = ProjectionHead(width, hidden_dim or width, out_dim)
    ref = next(model.parameters(), None)
    if ref is not None:
        head.to(device=ref.device, dtype=ref.dtype)
    owner, _, attr = names[0].rpartition(".")
    setattr(model.get_submodule(owner), attr, head)
    return head


def _two_views(batch: MultiViewBatch) -> tuple[torch.Tensor, torch.Tensor]:
    if len(batch.views) < 2:
        raise ValueError(f"contrastive training needs two views per image, the batch has {len(batch.views)}")
    return batch.views[0], batch.views[1]


class SimCLR(Method):
    """`loss_nt_xent` over the two views; negatives from every DDP rank. Outputs: the projections z1, z2."""

    loss_weights = {"loss_nt_xent": 1.0}

    def __init__(self, temperature: float = 0.5) -> None:
        self.temperature = temperature

    def step(self, model: nn.Module, batch: MultiViewBatch) -> StepOutput:
        v1, v2 = _two_views(batch)
        z1, z2 = model(torch.cat([v1, v2])).chunk(2)  # one forward for both views: (B, P) each
        loss = nt_xent_loss(z1=z1, z2=z2, temperature=self.temperature, gather=True)
        return StepOutput({"loss_nt_xent": loss}, {"z1": z1.detach(), "z2": z2.detach()})


class SupervisedContrastive(Method):
    """`loss_supcon` (all same-label views positive) or `loss_triplet` (batch-hard, on unit-norm projections)."""

    def __init__(self, loss: str = "supcon", temperature: float = 0.1, margin: float = 0.2) -> None:
        if loss not in SUPCON_LOSSES:
            raise ValueError(f"loss must be one of {', '.join(SUPCON_LOSSES)}, got {loss!r}")
        self.loss, self.temperature, self.margin = loss, temperature, margin
        self.loss_weights = {f"loss_{loss}": 1.0}

    def step(self, model: nn.Module, batch: MultiViewBatch) -> StepOutput:
        if batch.labels is None:
            raise ValueError("supervised contrastive training needs labelled images")
        v1, v2 = _two_views(batch)
        z = model(torch.cat([v1, v2]))  # (2B, P)
        labels = torch.cat([batch.labels, batch.labels])  # both views of an image share its label
        if self.loss == "supcon":
            loss = supcon_loss(embeds=z, labels=labels, temperature=self.temperature, gather=True)
        else:
            z_unit = nn.functional.normalize(z, dim=-1)
            loss = triplet_batch_hard_loss(embeds=z_unit, labels=labels, margin=self.margin, gather=True)
        z1, z2 = z.detach().chunk(2)
        return StepOutput({f"loss_{self.loss}": loss}, {"z1": z1, "z2": z2})
