"""NT-Xent, SupCon and batch-hard triplet: hand-computed values on four 2-D embeddings, the identities between them,
and two gloo processes with gathered negatives under DDP taking the same loss and gradients as one process."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitlab.losses.selfsup import nt_xent_loss, supcon_loss, triplet_batch_hard_loss

# Two views of two images, all unit-norm: a = first views, b = second views.
# Cosines: a0.a1 = 0, a0.b0 = 0.6, a0.b1 = -0.8, a1.b0 = 0.8, a1.b1 = 0.6, b0.b1 = 0.
A = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
B = torch.tensor([[0.6, 0.8], [-0.8, 0.6]])


def _row(pos: float, others: list[float], tau: float) -> float:
    """-log(e^(pos/tau) / sum over every other view of e^(s/tau)) for one anchor."""
    return -pos / tau + math.log(sum(math.exp(s / tau) for s in [pos, *others]))


def test_nt_xent_hand_computed():
    tau = 0.5
    rows = [
        _row(0.6, [0.0, -0.8], tau),  # a0: positive b0; negatives a1, b1
        _row(0.6, [0.0, 0.8], tau),  # a1: positive b1; negatives a0, b0
        _row(0.6, [0.8, 0.0], tau),  # b0: positive a0; negatives a1, b1
        _row(0.6, [-0.8, 0.0], tau),  # b1: positive a1; negatives a0, b0
    ]
    expected = sum(rows) / 4
    # a0 and b1: log(e^1.2 + e^0 + e^-1.6) - 1.2 = 0.30896; a1 and b0: log(e^1.2 + e^0 + e^1.6) - 1.2 = 1.02712
    assert expected == pytest.approx((0.308957 + 1.027123) / 2, abs=1e-6)
    assert nt_xent_loss(z1=A, z2=B, temperature=tau).item() == pytest.approx(expected, abs=1e-6)
    # cosine similarity: the scale of a projection does not matter; swapping the views changes nothing
    assert nt_xent_loss(z1=3 * A, z2=B / 2, temperature=tau).item() == pytest.approx(expected, abs=1e-6)
    assert nt_xent_loss(z1=B, z2=A, temperature=tau).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="two views per image"):
        nt_xent_loss(z1=A, z2=B[:1])
    with pytest.raises(ValueError, match="temperature"):
        nt_xent_loss(z1=A, z2=B, temperature=0.0)


def test_supcon_with_one_label_per_image_is_nt_xent():
    z1, z2 = torch.randn(6, 5), torch.randn(6, 5)
    labels = torch.arange(6).repeat(2)
    for tau in (0.1, 0.5):
        sup = supcon_loss(embeds=torch.cat([z1, z2]), labels=labels, temperature=tau)
        assert sup.item() == pytest.approx(nt_xent_loss(z1=z1, z2=z2, temperature=tau).item(), abs=1e-5)


def test_supcon_hand_computed_several_positives():
    # views a0, a1, b0 of class 0, b1 alone in class 1 (no positive: left out of the mean)
    tau = 0.1
    embeds, labels = torch.cat([A, B]), torch.tensor([0, 0, 0, 1])

    def anchor(pos: list[float], neg: list[float]) -> float:
        log_z = math.log(sum(math.exp(s / tau) for s in pos + neg))
        return -sum(s / tau - log_z for s in pos) / len(pos)

    expected = (
        anchor([0.0, 0.6], [-0.8])  # a0: positives a1, b0; b1 negative
        + anchor([0.0, 0.8], [0.6])  # a1: positives a0, b0
        + anchor([0.6, 0.8], [0.0])  # b0: positives a0, a1
    ) / 3
    assert supcon_loss(embeds=embeds, labels=labels, temperature=tau).item() == pytest.approx(expected, abs=1e-5)
    # nobody with a positive: zero, and still differentiable
    e = embeds.clone().requires_grad_()
    loss = supcon_loss(embeds=e, labels=torch.arange(4))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(e.grad, torch.zeros_like(e))
    with pytest.raises(ValueError, match=r"labels \(3,\)"):
        supcon_loss(embeds=embeds, labels=labels[:3])


def test_triplet_batch_hard_hand_computed():
    # points on a line: 0, 2 (class 0); 2.5, 5 (class 1); margin 0.2
    # anchor 0: hardest pos 2, hardest neg 2.5 -> max(0.2 + 2 - 2.5, 0) = 0
    # anchor 2: pos 2, neg min(0.5, 3) = 0.5 -> 1.7; anchor 2.5: pos 2.5, neg 0.5 -> 2.2; anchor 5: pos 2.5, neg 3 -> 0
    # (margin 0: 0, 1.5, 2.0, 0)
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [2.5, 0.0], [5.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    assert triplet_batch_hard_loss(embeds=x, labels=labels, margin=0.2).item() == pytest.approx(0.975, abs=1e-5)
    assert triplet_batch_hard_loss(embeds=x, labels=labels, margin=0.0).item() == pytest.approx(0.875, abs=1e-5)
    # a class of one has no positive: the anchor 5 (alone in class 2) is left out, but still a negative for others
    lone = torch.tensor([0, 0, 1, 2])
    # anchor 0: pos 2, neg 2.5 -> 0; anchor 2: pos 2, neg 0.5 -> 1.7; anchor 2.5 has no positive
    assert triplet_batch_hard_loss(embeds=x, labels=lone, margin=0.2).item() == pytest.approx(0.85, abs=1e-5)
    # coincident embeddings (zero distances) give finite gradients
    e = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 1.0], [0.0, 1.0]], requires_grad=True)
    triplet_batch_hard_loss(embeds=e, labels=labels).backward()
    assert torch.isfinite(e.grad).all()
    with pytest.raises(ValueError, match="margin"):
        triplet_batch_hard_loss(embeds=x, labels=labels, margin=-1.0)


def test_gather_alone_is_the_plain_loss():
    z1, z2, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    assert nt_xent_loss(z1=z1, z2=z2, gather=True).item() == pytest.approx(nt_xent_loss(z1=z1, z2=z2).item())
    e = torch.cat([z1, z2])
    yy = y.repeat(2)
    assert supcon_loss(embeds=e, labels=yy, gather=True).item() == pytest.approx(
        supcon_loss(embeds=e, labels=yy).item()
    )


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)  # identical on every rank, as DDP requires
        self.proj = nn.Linear(6, 4)

    def forward(self, x):
        return self.proj(x)


def _data(n=8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g), torch.randn(n, 6, generator=g), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])


def _losses(model, x1, x2, y, gather):
    z1, z2 = model(x1), model(x2)
    z1.retain_grad()
    embeds, labels = torch.cat([z1, z2]), torch.cat([y, y])
    return {
        "nt_xent": (nt_xent_loss(z1=z1, z2=z2, gather=gather), z1),
        "supcon": (supcon_loss(embeds=embeds, labels=labels, gather=gather), z1),
        "triplet": (triplet_batch_hard_loss(embeds=F.normalize(embeds, dim=-1), labels=labels, gather=gather), z1),
    }


def _worker(rank, world, port, out):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        x1, x2, y = _data()
        local = slice(rank * 4, (rank + 1) * 4)  # this rank's half of the images
        result = {}
        for name in ("nt_xent", "supcon", "triplet"):
            model = _Encoder()
            ddp = DistributedDataParallel(model)
            loss, z1 = _losses(ddp, x1[local], x2[local], y[local], gather=True)[name]
            loss.backward()  # DDP averages the parameter gradients over the ranks
            grads = {n: p.grad.tolist() for n, p in model.named_parameters()}
            result[name] = dict(loss=loss.item(), grads=grads, z1_grad=z1.grad.tolist())
        out[rank] = result
    finally:
        dist.destroy_process_group()


def test_gathered_negatives_under_ddp_equal_one_process_with_the_whole_batch():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, port, out), nprocs=2)

    for name in ("nt_xent", "supcon", "triplet"):
        model = _Encoder()
        loss, z1 = _losses(model, *_data(), gather=False)[name]
        loss.backward()
        for rank in (0, 1):
            got = out[rank][name]
            assert got["loss"] == pytest.approx(loss.item(), abs=1e-6), name  # every rank: the whole batch's loss
            for n, p in model.named_parameters():
                assert torch.allclose(torch.tensor(got["grads"][n]), p.grad, atol=1e-6), (name, n)
            # the local projections get the sum of both ranks' gradients: twice one process's (DDP's mean undoes it)
            local = 2 * z1.grad[rank * 4 : (rank + 1) * 4]
            assert torch.allclose(torch.tensor(got["z1_grad"]), local, atol=1e-6), name
