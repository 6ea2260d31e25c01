"""Self-supervised and metric-learning losses on embeddings: SimCLR's NT-Xent, SupCon, batch-hard triplet.

NT-Xent (Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", arXiv 2002.05709,
Algorithm 1): 2B views, z_1..z_B and z_{B+1}..z_{2B} the two views of B images; cosine similarities / tau; for every
view the other view of its image is the positive, the 2B - 2 other views the negatives; CE averaged over all 2B views.
The paper finds tau = 0.1 best on ImageNet (Table 5) and 0.5 on CIFAR-10 (Appendix B.9); 0.5 is the default here,
where the images are small.

SupCon (Khosla et al., "Supervised Contrastive Learning", arXiv 2004.11362, Eq. 2, L_out): every other view with the
anchor's label is a positive:
    L = mean_i -1/|P(i)| sum_{p in P(i)} log(exp(z_i.z_p / tau) / sum_{a != i} exp(z_i.z_a / tau)),
averaged over the anchors that have a positive (the paper sums; the mean keeps the scale independent of the batch).
With one label per image (two views each) it is NT-Xent exactly. The paper's temperature: 0.1.

Batch-hard triplet (Hermans et al., "In Defense of the Triplet Loss for Person Re-Identification", arXiv 1703.07737,
Eq. 5): for every anchor the farthest positive and the nearest negative in the batch, Euclidean distances,
mean over anchors of max(margin + d(a, p_hardest) - d(a, n_hardest), 0). Margin 0.2 as FaceNet's (arXiv 1503.03832).

Under DDP (`gather=True`) the embeddings (and labels) of every rank are gathered with `gather_with_grad`, the same
all-gather CLIP's loss uses (`losses/contrastive.py`, where the gradient bookkeeping is explained): every rank computes
the whole global batch's loss, so the negatives of every view come from all ranks and DDP's gradient averaging gives
exactly the one-process gradient of the whole batch. Local batches must be equal in size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vitlab.losses.contrastive import gather_with_grad

__all__ = ["nt_xent_loss", "supcon_loss", "triplet_batch_hard_loss"]


def _similarities(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """(M, E) embeddings -> (M, M) cosine similarities / tau in float32, the diagonal (self pairs) at -inf."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = F.normalize(z.float(), dim=-1)  # float32 under bf16 autocast: the softmax runs over the global batch
    sim = z @ z.t() / temperature  # (M, M)
    return sim.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))


def nt_xent_loss(*, z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, gather: bool = False) -> torch.Tensor:
    """SimCLR's normalised temperature-scaled cross-entropy over the 2B views of B images.

    Shapes: z1, z2 (B, E) projections of the two views, row i of each from image i (normalised here).
    gather: negatives from every DDP rank (module docstring); the loss is the global batch's.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)} must both be (B, E): two views per image")
    if gather:
        z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
    B = z1.shape[0]
    sim = _similarities(torch.cat([z1, z2]), temperature)  # (2B, 2B), rows 0..B-1 view 1, B..2B-1 view 2
    idx = torch.arange(B, device=sim.device)
    positives = torch.cat([idx + B, idx])  # view 1 of image i <-> view 2 of image i
    return F.cross_entropy(sim, positives)


def supcon_loss(
    *, embeds: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1, gather: bool = False
) -> torch.Tensor:
    """Supervised contrastive loss (L_out): all other views of the anchor's class are its positives.

    Shapes: embeds (M, E), all views of all images in any order (normalised here); labels (M,) integer classes,
    the same label for every view of an image. Anchors alone in their class are left out of the mean; a batch in
    which no anchor has a positive gives a zero loss (still attached to the graph).
    """
    if embeds.ndim != 2 or labels.shape != embeds.shape[:1]:
        raise ValueError(f"embeds {tuple(embeds.shape)} must be (M, E) and labels {tuple(labels.shape)} (M,)")
    if gather:
        embeds, labels = gather_with_grad(embeds), gather_with_grad(labels)
    sim = _similarities(embeds, temperature)  # (M, M)
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)  # log softmax over A(i) = every view but i
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive = (labels[:, None] == labels[None, :]) & ~eye  # (M, M) P(i)
    n_pos = positive.sum(1)
    has = n_pos > 0
    if not has.any():
        return sim.masked_fill(eye, 0).sum() * 0.0
    mean_log_prob_pos = log_prob.masked_fill(~positive, 0).sum(1)[has] / n_pos[has]  # -inf diagonal masked out
    return -mean_log_prob_pos.mean()


def triplet_batch_hard_loss(*, embeds: torch.Tensor, labels: torch.Tensor, margin: float = 0.2, gather: bool = False):
    """Triplet loss with batch-hard mining: per anchor, its farthest positive and nearest negative.

    Shapes: embeds (M, E), used as given (normalise them first for distances on the sphere); labels (M,).
    Anchors with no positive or no negative in the batch are left out; none left gives a zero loss.
    """
    if embeds.ndim != 2 or labels.shape != embeds.shape[:1]:
        raise ValueError(f"embeds {tuple(embeds.shape)} must be (M, E) and labels {tuple(labels.shape)} (M,)")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if gather:
        embeds, labels = gather_with_grad(embeds), gather_with_grad(labels)
    x = embeds.float()
    sq = (x * x).sum(1)
    # sqrt of a clamped square: the zero self-distances would give sqrt an infinite gradient
    dist = (sq[:, None] + sq[None, :] - 2 * x @ x.t()).clamp_min(1e-12).sqrt()  # (M, M)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos, neg = same & ~eye, ~same
    valid = pos.any(1) & neg.any(1)
    if not valid.any():
        return dist.sum() * 0.0
    hardest_pos = dist.masked_fill(~pos, float("-inf")).amax(1)  # (M,)
    hardest_neg = dist.masked_fill(~neg, float("inf")).amin(1)  # (M,)
    return F.relu(margin + hardest_pos - hardest_neg)[valid].mean()
