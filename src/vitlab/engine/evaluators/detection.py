"""COCO box AP by pycocotools (the reference evaluator, not a re-implementation), from DETR-style outputs.

Each query becomes one detection: its best real class (softmax over K+1, "no object" excluded) and that score, its
box scaled from normalised cxcywh to the image's annotated pixel size (DETR's PostProcess). All Q detections of an
image go to COCOeval, which keeps the top 100 by score, as the reference does. AP, AP50, AP75, APs/m/l are
pycocotools' summary numbers; a size range without any ground-truth box is nan (pycocotools' -1).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from vitlab.data.batches import DetectionBatch
from vitlab.engine.evaluators.base import Evaluator

SUMMARY = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
EXAMPLES = 8  # images whose confident detections the result keeps for the report's figure
EXAMPLE_SCORE = 0.5


@dataclass
class DetectionResult:
    ap: float  # AP at IoU 0.50:0.95, COCO's primary metric
    ap50: float
    ap75: float
    ap_small: float  # objects under 32x32 pixels
    ap_medium: float
    ap_large: float  # objects over 96x96 pixels
    per_class_ap: list[float]  # AP 0.50:0.95 per category, nan where it has no ground truth
    count: int  # evaluated images
    detections: int  # detections handed to COCOeval
    examples: dict = field(default_factory=dict)  # image id -> its detections scoring >= 0.5 (the first 8 images)

    @property
    def metrics(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in SUMMARY}

    def details(self) -> dict:
        return {**self.metrics, "per_class_ap": self.per_class_ap, "images": self.count}


def postprocess(
    logits: torch.Tensor, boxes: torch.Tensor, sizes: list[tuple[int, int]]
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per image (scores (Q,), class indices (Q,), boxes (Q, 4) absolute xyxy pixels) from DETR's outputs.

    Shapes: logits (B, Q, K+1) with "no object" last, boxes (B, Q, 4) normalised cxcywh, sizes B x (H, W).
    """
    prob = logits.float().softmax(-1)[..., :-1]  # (B, Q, K)
    scores, labels = prob.max(-1)
    cx, cy, w, h = boxes.float().unbind(-1)
    xyxy = torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)  # (B, Q, 4)
    scale = torch.tensor([[W, H, W, H] for H, W in sizes], dtype=xyxy.dtype, device=xyxy.device)  # (B, 4)
    xyxy = xyxy * scale[:, None, :]
    return [(scores[b], labels[b], xyxy[b]) for b in range(len(sizes))]


def coco_evaluate(gt: dict, detections: list[dict]) -> tuple[np.ndarray, list[float]]:
    """pycocotools' 12 summary numbers and the per-category AP 0.50:0.95 (nan where a category has no ground truth)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.dataset.setdefault("info", {})
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(detections) if detections else COCO()
        if not detections:
            coco_dt.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # (T iou, R recall, K categories, A areas, M max-dets)
    per_class = []
    for k in range(precision.shape[2]):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class.append(float(p.mean()) if p.size else math.nan)
    return ev.stats, per_class


class DetectionEvaluator(Evaluator):
    primary = "ap"
    metric_labels = {"ap": "AP", "ap50": "AP50", "ap75": "AP75", "ap_small": "AP small", "ap_medium": "AP medium",
                     "ap_large": "AP large"}  # fmt: skip

    def must_be_finite(self) -> set[str]:
        return {"ap", "ap50", "ap75"}  # a size range without ground truth has no AP (pycocotools: -1, here nan)

    def __init__(self, gt: dict, category_ids: tuple[int, ...]) -> None:
        """gt: the split's COCO instances dict (crowds included); category_ids: class index -> COCO category id."""
        self.gt, self.category_ids = gt, category_ids
        self.reset()

    def reset(self) -> None:
        self.detections: list[dict] = []
        self.seen: list[int] = []
        self.examples: dict[int, list[dict]] = {}

    def update(self, model: nn.Module, batch: DetectionBatch) -> None:
        if batch.image_ids is None or batch.orig_sizes is None:
            raise ValueError("detection evaluation needs image ids and sizes in the batch (a CocoDetection split)")
        out = model(batch.images, batch.pixel_mask)
        for image_id, (scores, labels, xyxy) in zip(
            batch.image_ids, postprocess(out.logits, out.pred_boxes, batch.orig_sizes), strict=True
        ):
            self.seen.append(image_id)
            wh = (xyxy[:, 2:] - xyxy[:, :2]).clamp(min=0)
            for s, c, (x0, y0), (w, h) in zip(scores.tolist(), labels.tolist(), xyxy[:, :2].tolist(), wh.tolist(),
                                              strict=True):  # fmt: skip
                self.detections.append(
                    {"image_id": image_id, "category_id": self.category_ids[c], "bbox": [x0, y0, w, h], "score": s}
                )
            if len(self.examples) < EXAMPLES:
                keep = scores >= EXAMPLE_SCORE
                self.examples[image_id] = [
                    {"label": int(c), "score": float(s), "box": b}
                    for c, s, b in zip(labels[keep].tolist(), scores[keep].tolist(), xyxy[keep].tolist(), strict=True)
                ]

    def compute(self) -> DetectionResult:
        if not self.seen:
            raise ValueError("evaluation set is empty")
        seen = set(self.seen)
        gt = {  # only the images evaluated (a torchrun rank, or a partial loader)
            **self.gt,
            "images": [im for im in self.gt["images"] if im["id"] in seen],
            "annotations": [a for a in self.gt["annotations"] if a["image_id"] in seen],
        }
        stats, per_class = coco_evaluate(gt, self.detections)
        values = [math.nan if v < 0 else float(v) for v in stats[: len(SUMMARY)]]
        return DetectionResult(
            *values, per_class_ap=per_class, count=len(seen), detections=len(self.detections), examples=self.examples
        )
