"""Detection data in COCO's instances format: `coco:ROOT` on disk, or the embedded shapes set in memory.

ROOT holds `annotations/instances_SPLIT.json` for a train and a validation split (`train2017`/`val2017`, or
`train`/`val`; any name after `instances_`) and the images of each split in `ROOT/SPLIT/` (the JSON's `file_name`).
Category ids need not be contiguous: they map to indices 0..K-1 in id order, names from the JSON, and back to ids for
the evaluator. Crowd annotations (`iscrowd: 1`) are not training targets (as in DETR) but stay in the ground truth the
evaluator reads. A sample is (uint8 image (C, H, W), target) with target boxes (n, 4) absolute xyxy pixels, labels (n,),
the COCO image id and the original (H, W); `DetectionTransform` turns it into model inputs and normalised cxcywh.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from vitlab.data.datasets import read_image
from vitlab.data.transforms import match_channels
from vitlab.errors import DataError

log = logging.getLogger(__name__)

TRAIN_SPLITS = ("train2017", "train")
VAL_SPLITS = ("val2017", "val", "test")


def _require(obj, key: str, kind: type, where: str):
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(f"{where}: missing key {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{where}: {key!r} must be {kind.__name__ if isinstance(kind, type) else kind}, "
                        f"found {type(value).__name__}")  # fmt: skip
    return value


def check_coco(coco: dict, source: str) -> dict:
    """The instances dict with every field detection reads checked: one DataError naming the file and entry."""
    if not isinstance(coco, dict):
        raise DataError(f"{source}: expected a COCO instances object, found {type(coco).__name__}")
    images = _require(coco, "images", list, source)
    anns = _require(coco, "annotations", list, source)
    cats = _require(coco, "categories", list, source)
    if not cats:
        raise DataError(f"{source}: 'categories' is empty")
    cat_ids = set()
    for i, c in enumerate(cats):
        cid = _require(c, "id", int, f"{source}: categories[{i}]")
        _require(c, "name", str, f"{source}: categories[{i}]")
        if cid in cat_ids:
            raise DataError(f"{source}: category id {cid} appears twice")
        cat_ids.add(cid)
    image_ids = set()
    for i, im in enumerate(images):
        where = f"{source}: images[{i}]"
        iid = _require(im, "id", int, where)
        _require(im, "file_name", str, where)
        for key in ("height", "width"):
            if _require(im, key, int, where) < 1:
                raise DataError(f"{where}: {key} must be >= 1, got {im[key]}")
        if iid in image_ids:
            raise DataError(f"{source}: image id {iid} appears twice")
        image_ids.add(iid)
    for i, a in enumerate(anns):
        where = f"{source}: annotations[{i}]"
        if _require(a, "image_id", int, where) not in image_ids:
            raise DataError(f"{where}: image_id {a['image_id']} is not among the images")
        if _require(a, "category_id", int, where) not in cat_ids:
            raise DataError(f"{where}: category_id {a['category_id']} is not among the categories")
        box = _require(a, "bbox", list, where)
        if len(box) != 4 or not all(isinstance(v, int | float) and math.isfinite(v) for v in box):
            raise DataError(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {box}")
        _require(a, "id", int, where)
    return coco


@dataclass(frozen=True)
class Categories:
    """COCO category ids <-> contiguous class indices (sorted by id), with their names."""

    ids: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def from_coco(cls, coco: dict) -> Categories:
        cats = sorted(coco["categories"], key=lambda c: c["id"])
        return cls(tuple(c["id"] for c in cats), tuple(c["name"] for c in cats))

    def index(self) -> dict[int, int]:
        return {cid: i for i, cid in enumerate(self.ids)}


class CocoDetection(Dataset):
    """Images of one COCO split with their targets; `load(image_info)` gives the uint8 (C, H, W) image."""

    def __init__(self, coco: dict, load: Callable[[dict], torch.Tensor], source: str) -> None:
        self.coco, self.load, self.source = coco, load, source
        self.categories = Categories.from_coco(coco)
        index = self.categories.index()
        self.images = sorted(coco["images"], key=lambda im: im["id"])
        per_image: dict[int, list] = {im["id"]: [] for im in self.images}
        dropped = 0
        for a in coco["annotations"]:
            x, y, w, h = a["bbox"]
            if a.get("iscrowd", 0) or w <= 0 or h <= 0:  # not a target: crowds, and degenerate boxes (DETR drops them)
                dropped += not a.get("iscrowd", 0)
                continue
            per_image[a["image_id"]].append(([x, y, x + w, y + h], index[a["category_id"]]))
        if dropped:
            log.warning("%s: %d annotation(s) with zero width or height are not used as targets", source, dropped)
        self.targets = []
        for im in self.images:
            objs = per_image[im["id"]]
            boxes = torch.tensor([b for b, _ in objs], dtype=torch.float32).reshape(-1, 4)
            W, H = im["width"], im["height"]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, W)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, H)
            labels = torch.tensor([c for _, c in objs], dtype=torch.long)
            self.targets.append({"boxes": boxes, "labels": labels, "image_id": im["id"], "orig_size": (H, W)})

    @property
    def classes(self) -> list[str]:
        return list(self.categories.names)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        info = self.images[i]
        img = self.load(info)
        if tuple(img.shape[1:]) != (info["height"], info["width"]):
            raise DataError(
                f"{self.source}: image {info['file_name']} is {img.shape[2]}x{img.shape[1]} but the annotations say "
                f"{info['width']}x{info['height']}"
            )
        return img, self.targets[i]


def _find_split(root: Path, names: tuple[str, ...]) -> tuple[Path, Path] | None:
    for name in names:
        ann = root / "annotations" / f"instances_{name}.json"
        if ann.is_file():
            return ann, root / name
    return None


def read_coco_json(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            coco = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    return check_coco(coco, str(path))


def load_coco_split(ann: Path, image_dir: Path) -> CocoDetection:
    coco = read_coco_json(ann)
    if not image_dir.is_dir():
        raise DataError(f"{ann} names images in {image_dir}, which is not a directory")
    missing = [im["file_name"] for im in coco["images"] if not (image_dir / im["file_name"]).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{ann}: image {image_dir / missing[0]} is missing{more}")
    return CocoDetection(coco, lambda info: read_image(image_dir / info["file_name"]), str(ann))


def load_coco(root: str | Path) -> tuple[CocoDetection, CocoDetection]:
    """(train, val) of a COCO-layout directory; both must have the same categories."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--data coco:{root}: not a directory (expected ROOT/annotations/instances_train2017.json ...)")
    found = [_find_split(root, names) for names in (TRAIN_SPLITS, VAL_SPLITS)]
    for f, names in zip(found, (TRAIN_SPLITS, VAL_SPLITS), strict=True):
        if f is None:
            wanted = " or ".join(f"annotations/instances_{n}.json" for n in names)
            raise DataError(f"--data coco:{root}: no {wanted}")
    train, val = (load_coco_split(*f) for f in found)
    if train.categories != val.categories:
        raise DataError(f"{found[0][0]} and {found[1][0]} have different categories")
    return train, val


def in_memory(coco: dict, pixels: list[np.ndarray], source: str) -> CocoDetection:
    """A CocoDetection over images held as uint8 (H, W, 3) arrays, in the order of coco['images']."""
    by_id = {
        im["id"]: torch.from_numpy(p).permute(2, 0, 1).contiguous()
        for im, p in zip(coco["images"], pixels, strict=True)
    }
    return CocoDetection(check_coco(coco, source), lambda info: by_id[info["id"]], source)


# ----- model inputs ---------------------------------------------------------------------------------------------
def xyxy_to_normalised_cxcywh(boxes: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(n, 4) absolute xyxy pixels -> (n, 4) cxcywh as fractions of the image side."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2 / W, (y0 + y1) / 2 / H, (x1 - x0) / W, (y1 - y0) / H), dim=-1)


def crop_box(img: torch.Tensor, target: dict, top: int, left: int, h: int, w: int) -> tuple[torch.Tensor, dict]:
    """The (h, w) window at (top, left) of a (C, H, W) image, with its absolute xyxy boxes moved into the window,
    cut at its edges, and dropped (with their labels) where nothing of them is left inside, as DETR's crop."""
    boxes = target["boxes"] - torch.tensor([left, top, left, top], dtype=target["boxes"].dtype)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    cropped = {**target, "boxes": boxes[keep], "labels": target["labels"][keep]}
    return img[:, top : top + h, left : left + w], cropped


@dataclass
class DetectionTransform:
    """uint8 (C, H, W) + target -> normalised float image + target with normalised cxcywh boxes.

    `min_size`: the shorter side is resized to it (None keeps the image's own size), the longer side capped at
    `max_size` (DETR: 800 / 1333). Training adds DETR's horizontal flip, a random rescale of the shorter side
    by a factor in `scale_jitter` and, with probability `crop_prob`, DETR's random crop first (`crop_box`): each
    side keeps a random fraction in `crop_scale` of its length (DETR crops 384-600 px out of images resized to
    400-600, about 0.64-1 of a side), boxes are cut to the crop and those left with no area dropped. Boxes are
    fractions of the image, so a resize leaves them as they are.
    """

    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    min_size: int | None = None
    max_size: int | None = None
    train: bool = False
    hflip: bool = True
    scale_jitter: tuple[float, float] = (0.8, 1.2)
    crop_prob: float = 0.5
    crop_scale: tuple[float, float] = (0.64, 1.0)

    def __post_init__(self) -> None:
        if len(self.mean) != self.in_chans:
            self.mean = (sum(self.mean) / len(self.mean),) * self.in_chans
            self.std = (sum(self.std) / len(self.std),) * self.in_chans
        self._mean = torch.tensor(self.mean)[:, None, None]
        self._std = torch.tensor(self.std)[:, None, None]

    def _size(self, H: int, W: int) -> tuple[int, int]:
        short = min(H, W) if self.min_size is None else self.min_size
        if self.train:
            lo, hi = self.scale_jitter
            short = short * (lo + (hi - lo) * torch.rand(()).item())
        scale = short / min(H, W)
        if self.max_size is not None:
            scale = min(scale, self.max_size / max(H, W))
        return max(1, round(H * scale)), max(1, round(W * scale))

    def __call__(self, img: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        if self.train and self.crop_prob > 0 and torch.rand(()) < self.crop_prob:
            H, W = img.shape[-2:]
            lo, hi = self.crop_scale
            h, w = (max(1, round(n * (lo + (hi - lo) * torch.rand(()).item()))) for n in (H, W))
            top, left = (int(torch.randint(0, n - m + 1, ()).item()) for n, m in ((H, h), (W, w)))
            img, target = crop_box(img, target, top, left, h, w)
        x = match_channels(img.float() / 255.0, self.in_chans)
        H, W = x.shape[-2:]
        boxes = xyxy_to_normalised_cxcywh(target["boxes"], H, W)
        size = self._size(H, W)
        if size != (H, W):
            x = F.interpolate(x[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        if self.train and self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
            boxes = boxes * torch.tensor([-1.0, 1.0, 1.0, 1.0]) + torch.tensor([1.0, 0.0, 0.0, 0.0])
        return (x - self._mean) / self._std, {**target, "boxes": boxes}


class TransformedDetection(Dataset):
    def __init__(self, base: CocoDetection, transform: DetectionTransform) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        return self.transform(*self.base[i])
