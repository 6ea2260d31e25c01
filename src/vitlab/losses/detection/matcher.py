"""Hungarian matching of DETR (Carion et al., arXiv 2005.12872, sec. 3.1, eq. 1).

The cost of pairing query i with target j is `class_weight * -p_i(c_j) + l1_weight * |b_i - b_j|_1
+ giou_weight * -GIoU(b_i, b_j)`; the minimum-cost one-to-one assignment comes from scipy's
`linear_sum_assignment`. As in the reference, the class cost is the negated probability (not the log
probability) and the cost matrix of the whole batch is built at once and split per image on the CPU.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

from vitlab.ops.boxes import box_cxcywh_to_xyxy, generalized_box_iou


def match_cost(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    tgt_labels: torch.Tensor,
    tgt_boxes: torch.Tensor,
    *,
    class_weight: float = 1.0,
    l1_weight: float = 5.0,
    giou_weight: float = 2.0,
) -> torch.Tensor:
    """(Q, K+1) logits, (Q, 4) cxcywh boxes vs (T,) labels, (T, 4) boxes -> (Q, T) matching cost."""
    prob = logits.softmax(-1)  # (Q, K+1)
    cost_class = -prob[:, tgt_labels]  # (Q, T)
    cost_l1 = torch.cdist(boxes, tgt_boxes, p=1)  # (Q, T)
    cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt_boxes))
    return class_weight * cost_class + l1_weight * cost_l1 + giou_weight * cost_giou


@torch.no_grad()
def hungarian_match(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    labels: list[torch.Tensor],
    target_boxes: list[torch.Tensor],
    *,
    class_weight: float = 1.0,
    l1_weight: float = 5.0,
    giou_weight: float = 2.0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image, the (query indices, target indices) of the minimum-cost assignment, each int64 of length min(Q, T).

    Shapes:
        logits (B, Q, K+1), boxes (B, Q, 4) cxcywh in [0, 1]; labels B x (T_b,), target_boxes B x (T_b, 4).
    An image with no targets gets two empty index tensors (all its queries are "no object").
    """
    B, Q = logits.shape[:2]
    sizes = [len(t) for t in labels]
    empty = torch.empty(0, dtype=torch.int64)
    if sum(sizes) == 0:
        return [(empty, empty) for _ in range(B)]
    cost = match_cost(
        logits.flatten(0, 1).float(),
        boxes.flatten(0, 1).float(),
        torch.cat(labels),
        torch.cat(target_boxes).float(),
        class_weight=class_weight,
        l1_weight=l1_weight,
        giou_weight=giou_weight,
    )  # (B*Q, sum T)
    cost = cost.view(B, Q, -1).cpu()
    out = []
    for b, block in enumerate(cost.split(sizes, dim=-1)):
        if sizes[b] == 0:
            out.append((empty, empty))
            continue
        rows, cols = linear_sum_assignment(block[b].numpy())
        out.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
    return out
