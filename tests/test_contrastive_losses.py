"""CLIP's InfoNCE and SigLIP's sigmoid loss: hand-computed 2x2 values, and two gloo processes with gathered negatives
under DDP taking the same loss and gradients as one process with the whole batch."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitlab.losses.contrastive import clip_loss, gather_with_grad, siglip_loss

# Unit-norm pairs: image 0 = (1, 0), image 1 = (0, 1); text 0 = (0.6, 0.8), text 1 = (0, 1); scale 2.
# logits = 2 * image @ text^T = [[1.2, 0.0], [1.6, 2.0]] (row = image, column = text).
IMAGES = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
TEXTS = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
SCALE = torch.tensor(2.0)


def test_clip_loss_hand_computed():
    # rows: -log(e^1.2 / (e^1.2 + e^0)) = log(1 + e^-1.2); -log(e^2 / (e^1.6 + e^2)) = log(1 + e^-0.4)
    rows = (math.log(1 + math.exp(-1.2)) + math.log(1 + math.exp(-0.4))) / 2
    # columns: text 0 scores (1.2, 1.6) -> log(1 + e^0.4); text 1 scores (0, 2) -> log(1 + e^-2)
    cols = (math.log(1 + math.exp(0.4)) + math.log(1 + math.exp(-2.0))) / 2
    expected = (rows + cols) / 2
    assert expected == pytest.approx(0.454060, abs=1e-6)
    loss = clip_loss(image_embeds=IMAGES, text_embeds=TEXTS, logit_scale=SCALE)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # symmetric: swapping the towers swaps rows and columns, not the loss
    assert clip_loss(image_embeds=TEXTS, text_embeds=IMAGES, logit_scale=SCALE).item() == pytest.approx(expected)


def test_siglip_loss_hand_computed():
    # logits + bias -1 = [[0.2, -1.0], [0.6, 1.0]]; -log sigmoid(z * l) = log(1 + e^(-z l)), z = +1 on the diagonal
    # (0,0): 0.2, z=+1; (0,1): -1.0, z=-1; (1,0): 0.6, z=-1
    pairs = [math.log(1 + math.exp(-0.2)), math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(0.6))]
    pairs.append(math.log(1 + math.exp(-1.0)))  # diagonal (1, 1): z l = 1.0
    expected = sum(pairs) / 2  # summed over the 4 pairs, divided by the batch size 2
    assert expected == pytest.approx(1.131075, abs=1e-6)
    loss = siglip_loss(image_embeds=IMAGES, text_embeds=TEXTS, logit_scale=SCALE, logit_bias=torch.tensor(-1.0))
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_losses_reject_unpaired_batches_and_gather_is_identity_alone():
    with pytest.raises(ValueError, match="one caption per image"):
        clip_loss(image_embeds=IMAGES, text_embeds=TEXTS[:1], logit_scale=SCALE)
    x = torch.randn(3, 4)
    assert gather_with_grad(x) is x  # no process group: one process, nothing to gather
    loss = clip_loss(image_embeds=IMAGES, text_embeds=TEXTS, logit_scale=SCALE, gather=True)
    assert loss.item() == pytest.approx(clip_loss(image_embeds=IMAGES, text_embeds=TEXTS, logit_scale=SCALE).item())


class _Towers(nn.Module):
    """Two linear 'towers' and a learned temperature: enough for the loss's gradients to reach shared weights."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)  # identical on every rank, as DDP requires
        self.image = nn.Linear(6, 4)
        self.text = nn.Linear(5, 4)
        self.t = nn.Parameter(torch.tensor(math.log(10.0)))
        # SigLIP's learned bias; CLIP has none (DDP must see every parameter used)
        self.bias = nn.Parameter(torch.tensor(-1.0)) if kind == "siglip" else None

    def forward(self, images, texts):
        return F.normalize(self.image(images), dim=-1), F.normalize(self.text(texts), dim=-1), self.t.exp(), self.bias


def _batch(n=8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g), torch.randn(n, 5, generator=g)


def _loss(kind, model, images, texts, gather):
    img, txt, scale, bias = model(images, texts)
    img.retain_grad()
    if kind == "clip":
        loss = clip_loss(image_embeds=img, text_embeds=txt, logit_scale=scale, gather=gather)
    else:
        loss = siglip_loss(image_embeds=img, text_embeds=txt, logit_scale=scale, logit_bias=bias, gather=gather)
    return loss, img


def _gather_worker(rank, world, port, kind, out):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = _Towers(kind)
        ddp = DistributedDataParallel(model)
        images, texts = _batch()
        local = slice(rank * 4, (rank + 1) * 4)  # this rank's half of the batch
        loss, img = _loss(kind, ddp, images[local], texts[local], gather=True)
        loss.backward()  # DDP averages the parameter gradients over the ranks
        grads = {n: p.grad.tolist() for n, p in model.named_parameters()}
        out[rank] = dict(loss=loss.item(), grads=grads, embed_grad=img.grad.tolist())
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_gathered_negatives_under_ddp_equal_one_process_with_the_whole_batch(kind):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_gather_worker, args=(2, port, kind, out), nprocs=2)

    model = _Towers(kind)
    loss, img = _loss(kind, model, *_batch(), gather=False)
    loss.backward()
    for rank in (0, 1):
        assert out[rank]["loss"] == pytest.approx(loss.item(), abs=1e-6)  # every rank: the whole batch's loss
        for name, p in model.named_parameters():
            assert torch.allclose(torch.tensor(out[rank]["grads"][name]), p.grad, atol=1e-6), name
        # the local embeddings get the sum of both ranks' gradients: twice one process's, which DDP's mean undoes
        local_grad = torch.tensor(out[rank]["embed_grad"])
        assert torch.allclose(local_grad, 2 * img.grad[rank * 4 : (rank + 1) * 4], atol=1e-6)
