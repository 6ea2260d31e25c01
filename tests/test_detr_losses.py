"""DETR's Hungarian matcher and set criterion: edge cases, brute force, hand-checked losses."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from vitlab.losses.detection import SetCriterion, hungarian_match, match_cost, set_losses


def _random_case(B, Q, K, sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, Q, K + 1, generator=g)
    boxes = torch.rand(B, Q, 4, generator=g) * 0.5 + 0.25
    labels = [torch.randint(0, K, (n,), generator=g) for n in sizes]
    tboxes = [torch.rand(n, 4, generator=g) * 0.5 + 0.25 for n in sizes]
    return logits, boxes, labels, tboxes


def test_matcher_zero_targets_gives_empty_indices():
    logits, boxes, labels, tboxes = _random_case(2, 5, 3, [0, 0])
    for src, tgt in hungarian_match(logits, boxes, labels, tboxes):
        assert src.dtype == torch.int64 and src.numel() == 0 and tgt.numel() == 0
    # one image empty, the other not
    logits, boxes, labels, tboxes = _random_case(2, 5, 3, [0, 3])
    (s0, t0), (s1, t1) = hungarian_match(logits, boxes, labels, tboxes)
    assert s0.numel() == 0 and len(s1) == 3 and sorted(t1.tolist()) == [0, 1, 2]


def test_matcher_one_query_per_target_and_obvious_match():
    # each target is exactly one query's box with a confident class: the matcher must pick those queries
    K, Q = 4, 6
    tboxes = [torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.6, 0.3, 0.2]])]
    labels = [torch.tensor([1, 3])]
    boxes = torch.full((1, Q, 4), 0.5)
    boxes[0, 4], boxes[0, 1] = tboxes[0][0], tboxes[0][1]
    logits = torch.zeros(1, Q, K + 1)
    logits[0, 4, 1] = logits[0, 1, 3] = 10.0
    ((src, tgt),) = hungarian_match(logits, boxes, labels, tboxes)
    assert dict(zip(tgt.tolist(), src.tolist(), strict=True)) == {0: 4, 1: 1}
    assert len(set(src.tolist())) == len(src)


@pytest.mark.parametrize("seed", range(4))
def test_matcher_equals_brute_force(seed):
    Q, T = 5, 3
    logits, boxes, labels, tboxes = _random_case(1, Q, 3, [T], seed=seed)
    cost = match_cost(logits[0], boxes[0], labels[0], tboxes[0])
    best = min(itertools.permutations(range(Q), T), key=lambda qs: sum(cost[q, t].item() for t, q in enumerate(qs)))
    ((src, tgt),) = hungarian_match(logits, boxes, labels, tboxes)
    got = sum(cost[s, t].item() for s, t in zip(src.tolist(), tgt.tolist(), strict=True))
    assert got == pytest.approx(sum(cost[q, t].item() for t, q in enumerate(best)), abs=1e-5)


def test_match_cost_hand_checked():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))  # K=2 plus no-object
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    cost = match_cost(logits, boxes, torch.tensor([1]), torch.tensor([[0.5, 0.5, 0.2, 0.4]]))
    # class -0.25; L1 |0.2-0.4| = 0.2; IoU 0.04/0.08 = 0.5 and the enclosing box is the union: GIoU 0.5
    assert cost.item() == pytest.approx(1 * -0.25 + 5 * 0.2 + 2 * -0.5, abs=1e-6)


def test_set_losses_hand_checked():
    # one image, Q=2, K=1: query 0 matched to the single target, query 1 is "no object"
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]]])
    labels, tboxes = [torch.tensor([0])], [torch.tensor([[0.5, 0.5, 0.2, 0.4]])]
    indices = [(torch.tensor([0]), torch.tensor([0]))]
    losses = set_losses(logits, boxes, labels, tboxes, indices, num_boxes=1.0, eos_coef=0.1)
    ce0 = -F.log_softmax(logits[0, 0], -1)[0]
    ce1 = -F.log_softmax(logits[0, 1], -1)[1]
    assert losses["loss_ce"].item() == pytest.approx(((1.0 * ce0 + 0.1 * ce1) / 1.1).item(), abs=1e-6)
    assert losses["loss_bbox"].item() == pytest.approx(0.2, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(0.5, abs=1e-6)
    assert losses["cardinality_error"].item() == 0.0  # query 0 says object, query 1 says no object


def test_criterion_names_aux_weights_and_gradients():
    logits, boxes, labels, tboxes = _random_case(2, 6, 3, [2, 0], seed=1)
    logits.requires_grad_(True)
    boxes.requires_grad_(True)
    aux = [(logits * 0.5, boxes * 0.9), (logits * 0.7, boxes * 0.95)]
    crit = SetCriterion()
    losses = crit(logits, boxes, labels, tboxes, aux=aux)
    names = {"loss_ce", "loss_bbox", "loss_giou", "cardinality_error"}
    assert set(losses) == names | {f"{n}_{i}" for n in names for i in range(2)}
    assert all(torch.isfinite(v) for v in losses.values())
    total = crit.total(losses)
    expected = sum(
        w * losses[n + s]
        for s in ["", "_0", "_1"]
        for n, w in [("loss_ce", 1.0), ("loss_bbox", 5.0), ("loss_giou", 2.0)]
    )
    torch.testing.assert_close(total, expected)
    total.backward()
    assert logits.grad.abs().sum() > 0 and boxes.grad.abs().sum() > 0


def test_criterion_all_negative_batch():
    logits, boxes, labels, tboxes = _random_case(2, 4, 3, [0, 0])
    losses = SetCriterion()(logits, boxes, labels, tboxes)
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_giou"].item() == 0.0
    # all queries target "no object": CE is the plain mean (a single class weight cancels)
    expected = F.cross_entropy(logits.flatten(0, 1), torch.full((8,), 3))
    assert losses["loss_ce"].item() == pytest.approx(expected.item(), abs=1e-6)
    assert math.isfinite(losses["cardinality_error"].item())


def _num_boxes_worker(rank, world, port, out):
    import torch.distributed as dist

    from vitlab.losses.detection.criterion import num_boxes_across_processes

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        labels = [torch.zeros(3 if rank == 0 else 1, dtype=torch.int64)]  # rank 0 has 3 targets, rank 1 has 1
        out[rank] = num_boxes_across_processes(labels, torch.device("cpu"))
    finally:
        dist.destroy_process_group()


def test_num_boxes_is_averaged_over_processes():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_num_boxes_worker, args=(2, port, out), nprocs=2)
    assert dict(out) == {0: 2.0, 1: 2.0}  # (3 + 1) / 2 on both ranks, so both divide by the same number
