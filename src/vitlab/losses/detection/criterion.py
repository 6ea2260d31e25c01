"""DETR's set criterion (Carion et al., arXiv 2005.12872, sec. 3.1 and appendix A.2).

After Hungarian matching, each image contributes a cross-entropy over all Q queries (unmatched queries
target the "no object" class, the last index, down-weighted by `eos_coef` = 0.1), and an L1 and a GIoU
loss over the matched boxes, both summed and divided by the number of target boxes in the whole batch
(averaged over processes under DDP, so every rank divides by the same number). `cardinality_error` is
logged, not trained. Losses come back unweighted and by name; `SetCriterion.total` is the one place the
weights (CE 1, L1 5, GIoU 2) are applied. Auxiliary decoder outputs get the same losses with a `_{i}` suffix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vitlab.losses.detection.matcher import hungarian_match
from vitlab.ops.boxes import box_cxcywh_to_xyxy, generalized_box_iou


def num_boxes_across_processes(labels: list[torch.Tensor], device: torch.device) -> float:
    """Targets in the batch, averaged over DDP processes and at least 1 (an all-negative batch divides by 1)."""
    n = torch.tensor(float(sum(len(t) for t in labels)), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return max(n.item(), 1.0)


def set_losses(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    labels: list[torch.Tensor],
    target_boxes: list[torch.Tensor],
    indices: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    num_boxes: float,
    eos_coef: float = 0.1,
) -> dict[str, torch.Tensor]:
    """Unweighted `loss_ce`, `loss_bbox`, `loss_giou` and `cardinality_error` for one decoder output.

    Shapes: logits (B, Q, K+1) with "no object" at index K, boxes (B, Q, 4) cxcywh; indices from `hungarian_match`.
    """
    B, Q, K1 = logits.shape
    batch_idx = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)]).to(logits.device)
    src_idx = torch.cat([src for src, _ in indices]).to(logits.device)

    target_classes = torch.full((B, Q), K1 - 1, dtype=torch.int64, device=logits.device)  # (B, Q) all "no object"
    target_classes[batch_idx, src_idx] = torch.cat([t[j] for t, (_, j) in zip(labels, indices, strict=True)]).to(
        logits.device
    )
    class_weight = torch.ones(K1, device=logits.device, dtype=logits.dtype)
    class_weight[-1] = eos_coef
    loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes, weight=class_weight)

    matched = boxes[batch_idx, src_idx]  # (M, 4)
    tgt = torch.cat([t[j] for t, (_, j) in zip(target_boxes, indices, strict=True)]).to(
        boxes.device, boxes.dtype
    )  # (M, 4)
    loss_bbox = F.l1_loss(matched, tgt, reduction="none").sum() / num_boxes
    giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(matched), box_cxcywh_to_xyxy(tgt)))
    loss_giou = (1 - giou).sum() / num_boxes

    with torch.no_grad():  # how many queries predict an object, vs how many targets there are
        n_pred = (logits.argmax(-1) != K1 - 1).sum(1).float()  # (B,)
        n_true = torch.tensor([float(len(t)) for t in labels], device=logits.device)
        cardinality_error = F.l1_loss(n_pred, n_true)
    return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou, "cardinality_error": cardinality_error}


@dataclass(frozen=True)
class SetCriterion:
    """Matching + `set_losses` on the final and every auxiliary decoder output; `total` applies the weights."""

    eos_coef: float = 0.1  # weight of the "no object" class in CE (sec. 4: down-weighted by 10 for class imbalance)
    class_weight: float = 1.0  # CE weight, also the matcher's class cost
    l1_weight: float = 5.0  # L1 weight, also the matcher's L1 cost
    giou_weight: float = 2.0  # GIoU weight, also the matcher's GIoU cost

    def __call__(
        self,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        labels: list[torch.Tensor],
        target_boxes: list[torch.Tensor],
        aux: list[tuple[torch.Tensor, torch.Tensor]] = (),
    ) -> dict[str, torch.Tensor]:
        """Unweighted losses by name: final output plain, auxiliary output i (first decoder layer = 0) suffixed `_i`."""
        num_boxes = num_boxes_across_processes(labels, logits.device)
        out: dict[str, torch.Tensor] = {}
        for suffix, (lg, bx) in [("", (logits, boxes))] + [(f"_{i}", a) for i, a in enumerate(aux)]:
            indices = hungarian_match(
                lg,
                bx,
                labels,
                target_boxes,
                class_weight=self.class_weight,
                l1_weight=self.l1_weight,
                giou_weight=self.giou_weight,
            )
            losses = set_losses(lg, bx, labels, target_boxes, indices, num_boxes=num_boxes, eos_coef=self.eos_coef)
            out.update({k + suffix: v for k, v in losses.items()})
        return out

    def weights(self) -> dict[str, float]:
        return {"loss_ce": self.class_weight, "loss_bbox": self.l1_weight, "loss_giou": self.giou_weight}

    def weights_by_name(self, names) -> dict[str, float]:
        """The weight of each loss name, aux suffixes included ("loss_ce_3" -> the CE weight); 0 for the logged-only
        `cardinality_error*`."""
        w = self.weights()
        return {n: w.get(n, w.get(n.rsplit("_", 1)[0], 0.0)) for n in names}

    def total(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted sum that is back-propagated; `cardinality_error*` is logged only."""
        total = torch.zeros((), device=next(iter(losses.values())).device)
        for name, weight in self.weights_by_name(losses).items():
            if weight:
                total = total + weight * losses[name]
        return total
