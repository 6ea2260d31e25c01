"""What a ViT's embeddings learned: position-embedding similarity and the principal components of the patch filters.

"An Image is Worth 16x16 Words" (Dosovitskiy et al., arXiv 2010.11929), Fig. 7: (left) the top principal components
of the learned linear embedding filters, drawn as RGB patches; (centre) the cosine similarity between the position
embedding of each patch and those of all the others, drawn as one small map per patch on the patch grid. Here the
filters are the first convolution's (`pretrained_cfg["first_conv"]`: ViT's patch projection, kernel = stride = patch),
centred over the filters before the SVD as principal component analysis does; the prefix tokens' positions (class,
distillation) are left out of the similarities, as they have no place on the grid.
"""

from __future__ import annotations

import torch
from torch import nn


def position_similarity(model: nn.Module) -> torch.Tensor:
    """(Hp, Wp, Hp, Wp): cosine similarity of the learned position embedding of patch (r, c) with that of (r', c').

    ValueError, saying why, for a model without a learned absolute position table (CPVT's PEG, Swin's relative bias,
    CvT's convolutions, a fixed sin-cos table).
    """
    table = getattr(model, "pos_embed", None)
    if not isinstance(table, nn.Parameter):
        if isinstance(table, torch.Tensor):
            kind = "a fixed sin-cos position table, not a learned one"
        elif any(n.endswith("relative_position_bias_table") for n, _ in model.named_parameters()):
            kind = "a relative position bias inside each window, no absolute position embedding"
        else:
            kind = "no absolute position table (pos_embed)"
        raise ValueError(
            f"{type(model).__name__} has {kind}: position-embedding similarity needs a learned absolute position "
            "embedding (ViT, DeiT)"
        )
    grid = model.patch_embed.grid_size
    Hp, Wp = (grid, grid) if isinstance(grid, int) else grid
    pos = table.detach()[0, -Hp * Wp :].float()  # (N, D): the patch rows, after the prefix tokens'
    unit = pos / pos.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (unit @ unit.T).view(Hp, Wp, Hp, Wp)


def similarity_by_distance(sim: torch.Tensor) -> dict[float, float]:
    """{grid distance: mean similarity of the patch pairs that far apart} from a (Hp, Wp, Hp, Wp) similarity."""
    Hp, Wp = sim.shape[:2]
    r, c = torch.meshgrid(torch.arange(Hp), torch.arange(Wp), indexing="ij")
    rc = torch.stack([r.flatten(), c.flatten()], dim=1).double()  # (N, 2)
    dist = torch.cdist(rc, rc).round(decimals=3)  # (N, N)
    flat = sim.reshape(Hp * Wp, Hp * Wp).double()
    return {round(d.item(), 3): flat[dist == d].mean().item() for d in dist.unique()}


def principal_components(filters: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-k components (k, *filter shape), their explained variance ratios (k,)) of filters (F, ...).

    Principal component analysis of the F filters as F samples: centred over the filters, then the SVD; each
    component has unit norm, and its sign is fixed so that its largest-magnitude entry is positive. k is capped at
    the rank the data can have, min(F, filter size).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    F, shape = filters.shape[0], filters.shape[1:]
    X = filters.detach().reshape(F, -1).double()  # (F, P)
    X = X - X.mean(dim=0)
    _, s, Vh = torch.linalg.svd(X, full_matrices=False)  # Vh (min(F, P), P)
    var = s**2
    ratio = var / var.sum().clamp_min(1e-300)
    k = min(k, Vh.shape[0])
    comps = Vh[:k]
    peak = comps.gather(1, comps.abs().argmax(dim=1, keepdim=True))  # (k, 1)
    comps = comps * torch.where(peak < 0, -1.0, 1.0)
    return comps.float().view(k, *shape), ratio[:k].float()


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """(name, module) of the model's first convolution (`pretrained_cfg["first_conv"]`); ValueError without one."""
    name = getattr(model, "first_conv", "") or ""
    module = dict(model.named_modules()).get(name) if name else None
    if not isinstance(module, nn.Conv2d):
        raise ValueError(
            f"{type(model).__name__} names no first convolution (first_conv={name!r}): patch-embedding components "
            "need a model whose first layer is a convolution"
        )
    return name, module


def patch_embedding_components(model: nn.Module, k: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """(components (k, C, kh, kw), explained variance ratios (k,)) of the filters of the model's first convolution."""
    _, conv = first_conv(model)
    return principal_components(conv.weight, k)
