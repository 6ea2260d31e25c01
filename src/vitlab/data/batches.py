"""Typed batches: what a data loader yields for each task, and the collate function that builds each one.

A method reads a batch by field name (`batch.images`, `batch.labels`), never by tuple position, so a task can add a
field without breaking another. Every batch moves to a device with `.to(device)` and knows its size (`len(batch)`).

Shapes: B batch, C channels, H x W image, T caption tokens or clip frames, V views, n objects in one image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def _move(value, device: torch.device | str):
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, list | tuple):
        return type(value)(_move(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _move(v, device) for k, v in value.items()}
    return value


class Batch:
    """Shared behaviour of the batch dataclasses: `.to(device)` moves every tensor, nested ones included."""

    def to(self, device: torch.device | str):
        changes = {f.name: _move(getattr(self, f.name), device) for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **changes)

    def __len__(self) -> int:
        raise NotImplementedError


@dataclass(frozen=True)
class ImageBatch(Batch):
    """Images with one label each (classification, distillation) or a multi-hot row (multi-label)."""

    images: torch.Tensor  # (B, C, H, W) normalised model inputs
    labels: torch.Tensor  # (B,) int64 class indices, or (B, K) float 0/1 for multi-label
    targets: torch.Tensor | None = None  # (B, K) soft targets that replace labels in the loss (mixup / cutmix)

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass(frozen=True)
class DetectionBatch(Batch):
    """Images padded to a common size, with per-image boxes (DETR's `NestedTensor` + targets)."""

    images: torch.Tensor  # (B, C, H, W), zero-padded at the bottom/right
    pixel_mask: torch.Tensor  # (B, H, W) bool, True on real pixels
    boxes: list[torch.Tensor]  # B x (n, 4) boxes (cx, cy, w, h) normalised to the unpadded image
    labels: list[torch.Tensor]  # B x (n,) int64 class indices
    image_ids: list[int] | None = None  # COCO image ids, for the evaluator (None when the samples carry none)
    orig_sizes: list[tuple[int, int]] | None = None  # (H, W) of each image as annotated, before any resize

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass(frozen=True)
class CaptionBatch(Batch):
    """Images with one tokenised caption each (CLIP-style contrastive training)."""

    images: torch.Tensor  # (B, C, H, W)
    input_ids: torch.Tensor  # (B, T) int64, padded with pad_id
    attention_mask: torch.Tensor  # (B, T) int64, 1 on real tokens
    labels: torch.Tensor | None = None  # (B,) int64 zero-shot class of each image, -1 where it has none

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass(frozen=True)
class SegmentationBatch(Batch):
    """Images with a class index per pixel (semantic segmentation)."""

    images: torch.Tensor  # (B, C, H, W)
    masks: torch.Tensor  # (B, H, W) int64 class per pixel; -1 where unlabelled (ignored by loss and metrics)

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass(frozen=True)
class MultiViewBatch(Batch):
    """Several augmented views of each image (SimCLR's pairs, DINO's global + local crops)."""

    views: list[torch.Tensor]  # V x (B, C, h_v, w_v): views of one size are stacked; global crops first
    labels: torch.Tensor | None = None  # (B,) for SupCon and k-NN evaluation; None when training is label-free

    def __len__(self) -> int:
        return self.views[0].shape[0]


@dataclass(frozen=True)
class FeatureBatch(Batch):
    """Labelled images for judging a representation (k-NN, linear probe): a reference set and the queries it judges."""

    images: torch.Tensor  # (B, C, H, W) model inputs, not augmented
    labels: torch.Tensor  # (B,) int64
    bank: torch.Tensor  # (B,) bool: True for the reference set (training split) that k-NN votes from and probes fit

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass(frozen=True)
class ClipBatch(Batch):
    """Video clips with one label each."""

    clips: torch.Tensor  # (B, T, C, H, W)
    labels: torch.Tensor  # (B,) int64

    def __len__(self) -> int:
        return self.clips.shape[0]


# ----- collate functions: a list of dataset samples -> one batch -----------------------------------------------
def _labels(values: Sequence) -> torch.Tensor:
    if isinstance(values[0], torch.Tensor):
        return torch.stack(list(values))  # (B, K) multi-hot rows
    return torch.as_tensor(values, dtype=torch.long)  # (B,)


def collate_images(samples: Sequence[tuple[torch.Tensor, int | torch.Tensor]]) -> ImageBatch:
    """[(image (C, H, W), label)] -> ImageBatch; a label is an int or a (K,) multi-hot tensor."""
    images, labels = zip(*samples, strict=True)
    return ImageBatch(torch.stack(images), _labels(labels))


def collate_detection(samples: Sequence[tuple[torch.Tensor, dict]]) -> DetectionBatch:
    """[(image (C, H_i, W_i), {"boxes": (n, 4), "labels": (n,)})] -> DetectionBatch, padded to the largest image.

    Targets may also carry "image_id" and "orig_size" (H, W), which the batch keeps for the evaluator."""
    images = [img for img, _ in samples]
    C = images[0].shape[0]
    H, W = max(i.shape[1] for i in images), max(i.shape[2] for i in images)
    padded = images[0].new_zeros((len(images), C, H, W))
    mask = torch.zeros(len(images), H, W, dtype=torch.bool)
    for b, img in enumerate(images):
        padded[b, :, : img.shape[1], : img.shape[2]] = img
        mask[b, : img.shape[1], : img.shape[2]] = True
    boxes = [torch.as_tensor(t["boxes"], dtype=torch.float32).reshape(-1, 4) for _, t in samples]
    labels = [torch.as_tensor(t["labels"], dtype=torch.long).reshape(-1) for _, t in samples]
    for b, (bx, lb) in enumerate(zip(boxes, labels, strict=True)):
        if len(bx) != len(lb):
            raise ValueError(f"sample {b}: {len(bx)} boxes but {len(lb)} labels")
    targets = [t for _, t in samples]
    ids = [int(t["image_id"]) for t in targets] if all("image_id" in t for t in targets) else None
    sizes = [tuple(t["orig_size"]) for t in targets] if all("orig_size" in t for t in targets) else None
    return DetectionBatch(padded, mask, boxes, labels, ids, sizes)


def collate_captions(samples: Sequence[tuple], pad_id: int = 0) -> CaptionBatch:
    """[(image, token ids)] or [(image, token ids, class index)] -> CaptionBatch, ids right-padded to the longest."""
    images, ids = [s[0] for s in samples], [s[1] for s in samples]
    T = max(len(t) for t in ids)
    input_ids = torch.full((len(ids), T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(len(ids), T, dtype=torch.long)
    for b, t in enumerate(ids):
        input_ids[b, : len(t)] = torch.as_tensor(list(t), dtype=torch.long)
        attention_mask[b, : len(t)] = 1
    labels = _labels([s[2] for s in samples]) if all(len(s) > 2 for s in samples) else None
    return CaptionBatch(torch.stack(images), input_ids, attention_mask, labels)


def collate_segmentation(samples: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> SegmentationBatch:
    """[(image (C, H, W), mask (H, W) int64)] -> SegmentationBatch."""
    images, masks = zip(*samples, strict=True)
    return SegmentationBatch(torch.stack(images), torch.stack(masks).long())


def collate_views(samples: Sequence[tuple[Sequence[torch.Tensor], int | None]]) -> MultiViewBatch:
    """[([view_1, ..., view_V], label or None)] -> MultiViewBatch; every sample must have the same views."""
    V = len(samples[0][0])
    if any(len(views) != V for views, _ in samples):
        raise ValueError("every sample needs the same number of views")
    views = [torch.stack([s[0][v] for s in samples]) for v in range(V)]  # V x (B, C, h, w)
    labels = [label for _, label in samples]
    return MultiViewBatch(views, None if labels[0] is None else _labels(labels))


def collate_features(samples: Sequence[tuple[torch.Tensor, int, bool]]) -> FeatureBatch:
    """[(image (C, H, W), label, in the reference set)] -> FeatureBatch."""
    images, labels, bank = zip(*samples, strict=True)
    return FeatureBatch(torch.stack(images), _labels(labels), torch.as_tensor(bank, dtype=torch.bool))


def collate_clips(samples: Sequence[tuple[torch.Tensor, int]]) -> ClipBatch:
    """[(clip (T, C, H, W), label)] -> ClipBatch."""
    clips, labels = zip(*samples, strict=True)
    return ClipBatch(torch.stack(clips), _labels(labels))
