"""Named outputs of models that return more than one tensor."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DistilledLogits:
    cls: torch.Tensor  # (B, num_classes) from the class token, trained on the labels
    dist: torch.Tensor  # (B, num_classes) from the distillation token, trained on the teacher

    def mean(self) -> torch.Tensor:
        return (self.cls + self.dist) / 2


@dataclass
class ClipOutput:
    image_embeds: torch.Tensor  # (B, E) unit-norm image embeddings
    text_embeds: torch.Tensor  # (B', E) unit-norm text embeddings
    logits_per_image: torch.Tensor  # (B, B') exp(t) * cosine similarity; row i scores image i against every text
    logits_per_text: torch.Tensor  # (B', B) its transpose


@dataclass
class MaeOutput:
    pred: torch.Tensor  # (B, N, p*p*C) predicted pixels of every patch (the loss reads the masked ones)
    mask: torch.Tensor  # (B, N) 0 = visible to the encoder, 1 = masked
    ids_restore: torch.Tensor  # (B, N) the inverse of the shuffle that chose the visible patches
    latent: torch.Tensor  # (B, prefix + K, D) the encoder's output on the visible patches
