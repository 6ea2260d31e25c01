"""Mean attention distance: how far in the image each head looks, layer by layer.

"An Image is Worth 16x16 Words" (Dosovitskiy et al., arXiv 2010.11929), Fig. 7 right and Appendix D.7: for each head,
the distance in input pixels between a query patch and each key patch, weighted by the attention weight and summed
over the keys, then averaged over the queries (and over images): the analogue of a CNN's receptive field size.

Here the queries and keys are the grid tokens (`vitlab.explain.GridAttention`); attention to prefix tokens (class,
distillation), which have no place in the image, is dropped and each query's weights on the grid renormalised.
Distances run between token centres, so Swin's padded tokens and CvT's subsampled key grid take part where they lie.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vitlab.explain.grid import grid_attention


def mean_attention_distance(probs: torch.Tensor, q_centres: torch.Tensor, k_centres: torch.Tensor) -> torch.Tensor:
    """(H,): sum_j a_ij * |q_i - k_j|, averaged over the queries i and the batch.

    Shapes: probs (B, H, Nq, Nk) with rows summing to 1; q_centres (Nq, 2) and k_centres (Nk, 2) in pixels.
    """
    if probs.shape[-2:] != (q_centres.shape[0], k_centres.shape[0]):
        raise ValueError(
            f"probabilities {tuple(probs.shape)} do not match {q_centres.shape[0]} query and {k_centres.shape[0]} "
            "key centres"
        )
    dist = torch.cdist(q_centres.double(), k_centres.double())  # (Nq, Nk)
    per_query = (probs.double() * dist).sum(dim=-1)  # (B, H, Nq)
    return per_query.mean(dim=(0, 2)).float()


@torch.no_grad()
def attention_distances(
    model: nn.Module, images: torch.Tensor, layers: Sequence[int] | None = None
) -> dict[int, torch.Tensor]:
    """{layer index: (H,) mean attention distance in input pixels} over the batch `images` (B, C, H, W)."""
    out = {}
    for i, g in grid_attention(model, images, layers).items():
        q, k = g.centres()
        out[i] = mean_attention_distance(g.grid_probs(), q, k)
    return out
