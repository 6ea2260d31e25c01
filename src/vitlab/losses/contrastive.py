"""Image-text contrastive losses: CLIP's symmetric InfoNCE and SigLIP's pairwise sigmoid, with negatives from all ranks.

CLIP (Radford et al., arXiv 2103.00020, Figure 3): logits = scale * image @ text^T over unit-norm embeddings;
loss = (CE over rows + CE over columns) / 2, the positives on the diagonal.
SigLIP (Zhai et al., "Sigmoid Loss for Language Image Pre-Training", arXiv 2303.15343, Algorithm 1):
logits = scale * image @ text^T + bias; loss = -sum over all pairs of log sigmoid(z * logits) / batch size,
z = +1 on the diagonal and -1 elsewhere (the paper initialises log(scale) = log 10 and bias = -10).

`scale` here is the multiplier itself, exp(t) (`ClipModel.scale()`, already clamped), not t.

Under DDP (`gather=True`) every rank gathers the embeddings of all ranks, so each image meets the whole global
batch's texts as negatives, and computes the whole batch's loss: the same value on every rank. Gradients reach the
local embeddings only through the gather's backward, which sums every rank's gradient for them; DDP's averaging
of parameter gradients over the W ranks then gives exactly the single-process gradient of the whole batch (the
local embeddings' own gradient is W times that of one process, the factor the averaging removes). openai/CLIP and
open_clip gather the same way (open_clip `ClipLoss(gather_with_grad=True)`). Local batches must be equal in size.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = ["clip_loss", "gather_with_grad", "siglip_loss"]


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums every rank's gradient and returns this rank's slice.

    Written with all_reduce (which gloo has) rather than reduce_scatter (which it lacks): the tensors are (B, E)
    embeddings, so the extra traffic is small.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.local = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)  # (W*B, ...), rank order

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # sum over ranks of d(loss of rank r) / d(gathered batch)
        return grad[ctx.rank * ctx.local : (ctx.rank + 1) * ctx.local]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) on each of W ranks -> (W*B, ...) in rank order, gradients flowing back to each rank's own part.

    Without an initialised process group (one process) it returns `x` itself, so the same code runs everywhere.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def _logits(image_embeds: torch.Tensor, text_embeds: torch.Tensor, scale: torch.Tensor, gather: bool) -> torch.Tensor:
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(
            f"image_embeds {tuple(image_embeds.shape)} and text_embeds {tuple(text_embeds.shape)} must be the same "
            "(B, E): one caption per image, pair i on row i"
        )
    if gather:
        image_embeds, text_embeds = gather_with_grad(image_embeds), gather_with_grad(text_embeds)
    # float32 logits under bf16 autocast: a softmax over the global batch needs the precision
    return scale.float() * image_embeds.float() @ text_embeds.float().t()  # (B, B), row i = image i vs every text


def clip_loss(
    *, image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor, gather: bool = False
) -> torch.Tensor:
    """Symmetric InfoNCE: mean of CE over rows (image -> texts) and CE over columns (text -> images).

    Shapes: image_embeds and text_embeds (B, E), unit-norm, pair i matching; logit_scale: scalar exp(t).
    gather: negatives from every DDP rank (module docstring); the loss is the global batch's.
    """
    logits = _logits(image_embeds, text_embeds, logit_scale, gather)  # (B, B)
    labels = torch.arange(logits.shape[0], device=logits.device)  # positives on the diagonal
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def siglip_loss(
    *,
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    gather: bool = False,
) -> torch.Tensor:
    """Pairwise sigmoid loss: -sum_ij log sigmoid(z_ij (scale * x_i . y_j + bias)) / B, z = +1 if i == j else -1.

    Shapes: image_embeds and text_embeds (B, E), unit-norm, pair i matching; logit_scale, logit_bias: scalars.
    Normalised by the batch size, not the B^2 pairs (Algorithm 1 of the paper). gather: as for `clip_loss`.
    """
    logits = _logits(image_embeds, text_embeds, logit_scale, gather) + logit_bias.float()  # (B, B)
    B = logits.shape[0]
    signs = 2 * torch.eye(B, device=logits.device, dtype=logits.dtype) - 1  # +1 diagonal, -1 elsewhere
    return -F.logsigmoid(signs * logits).sum() / B
