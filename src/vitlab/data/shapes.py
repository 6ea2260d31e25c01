"""The embedded detection set: coloured shapes on noisy backgrounds, annotated in COCO format.

Each image (its own random size) holds 1..8 objects of four classes (circle, square, triangle, cross) with random
sizes, colours and positions; later shapes occlude earlier ones, but every object keeps at least half of its pixels
(a placement that would hide more is retried or dropped), so each visible shape is annotated. A box is the tight box of
the object's *visible* pixels and `area` its visible pixel count, as COCO's boxes and areas are of the visible
segmentation. Generation is deterministic in the seed: `vitlab train --task detection` builds it in memory, and
`vitlab data shapes --out DIR` writes the same images as PNG with `annotations/instances_{train,val}.json`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPE_CLASSES = ("circle", "square", "triangle", "cross")


@dataclass(frozen=True)
class ShapesConfig:
    min_side: int = 64  # image height and width are drawn independently from [min_side, max_side]
    max_side: int = 96
    min_objects: int = 1
    max_objects: int = 8
    min_object: float = 0.15  # object side as a share of the image's shorter side
    max_object: float = 0.4
    min_visible: float = 0.5  # share of an object's pixels that must stay visible under later objects

    def __post_init__(self) -> None:
        if not 16 <= self.min_side <= self.max_side:
            raise ValueError(
                f"image sides must satisfy 16 <= min_side <= max_side, got {self.min_side}, {self.max_side}"
            )
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if not 0 < self.min_object <= self.max_object <= 1:
            raise ValueError(f"need 0 < min_object <= max_object <= 1, got {self.min_object}, {self.max_object}")


def shape_mask(kind: int, size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """(H, W) bool mask of one shape drawn inside box = (x0, y0, x1, y1), inclusive pixel corners."""
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = box
    if SHAPE_CLASSES[kind] == "circle":
        draw.ellipse(box, fill=1)
    elif SHAPE_CLASSES[kind] == "square":
        draw.rectangle(box, fill=1)
    elif SHAPE_CLASSES[kind] == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=1)
    else:  # cross: a horizontal and a vertical bar a third of the side thick
        tx, ty = (x1 - x0) / 3, (y1 - y0) / 3
        draw.rectangle((x0, y0 + ty, x1, y1 - ty), fill=1)
        draw.rectangle((x0 + tx, y0, x1 - tx, y1), fill=1)
    return np.asarray(canvas, dtype=bool)


def _colour(rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
    """A saturated colour at least 100 (of 441) away from `avoid` in RGB, so every shape stands out."""
    while True:
        c = rng.integers(0, 256, 3)
        if np.linalg.norm(c - avoid) > 100:
            return c


def render_image(rng: np.random.Generator, cfg: ShapesConfig) -> tuple[np.ndarray, list[dict]]:
    """One image: uint8 (H, W, 3) and its objects [{"category": index, "bbox": [x, y, w, h], "area": pixels}]."""
    H, W = (int(v) for v in rng.integers(cfg.min_side, cfg.max_side + 1, 2))
    background = rng.integers(0, 256, 3)
    owner = np.full((H, W), -1, dtype=np.int64)  # which object each pixel shows (-1: background)
    drawn, kinds, colours = [], [], []
    for _ in range(int(rng.integers(cfg.min_objects, cfg.max_objects + 1))):
        for _attempt in range(10):
            side = int(rng.uniform(cfg.min_object, cfg.max_object) * min(H, W))
            x0, y0 = int(rng.integers(0, W - side)), int(rng.integers(0, H - side))
            kind = int(rng.integers(len(SHAPE_CLASSES)))
            mask = shape_mask(kind, (W, H), (x0, y0, x0 + side, y0 + side))
            trial = owner.copy()
            trial[mask] = len(drawn)
            # every object drawn so far, and this one, must keep min_visible of its pixels
            if all((trial == i).sum() >= cfg.min_visible * m.sum() for i, m in enumerate([*drawn, mask])):
                owner = trial
                drawn.append(mask)
                kinds.append(kind)
                colours.append(_colour(rng, background))
                break
    image = np.empty((H, W, 3), dtype=np.float64)
    image[:] = background
    for i, colour in enumerate(colours):
        image[owner == i] = colour
    image += rng.normal(0, 8, image.shape)  # sensor-like noise, so flat colour is not a give-away
    objects = []
    for i, kind in enumerate(kinds):
        ys, xs = np.nonzero(owner == i)
        x, y = int(xs.min()), int(ys.min())
        box = [x, y, int(xs.max()) + 1 - x, int(ys.max()) + 1 - y]
        objects.append({"category": kind, "bbox": box, "area": int(len(xs))})
    return np.clip(image, 0, 255).astype(np.uint8), objects


def shapes_coco(
    n: int, seed: int, cfg: ShapesConfig = ShapesConfig(), prefix: str = ""
) -> tuple[dict, list[np.ndarray]]:
    """`n` images in COCO's instances format (category ids 1..4) and the images themselves, uint8 (H, W, 3)."""
    rng = np.random.default_rng(seed)
    images, annotations, pixels = [], [], []
    for i in range(n):
        img, objects = render_image(rng, cfg)
        pixels.append(img)
        images.append({"id": i + 1, "file_name": f"{prefix}{i:06d}.png", "height": img.shape[0], "width": img.shape[1]})
        for obj in objects:
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": obj["category"] + 1,
                "bbox": obj["bbox"], "area": obj["area"], "iscrowd": 0,
            })  # fmt: skip
    categories = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(SHAPE_CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}, pixels


def write_shapes(out, n_train: int = 2000, n_val: int = 200, seed: int = 0, cfg: ShapesConfig = ShapesConfig()):
    """The shapes set on disk in COCO's layout: out/{train,val}/*.png and out/annotations/instances_{split}.json.

    The same images `vitlab train --task detection` generates in memory (train from `seed`, val from `seed + 1`).
    Written into a hidden sibling directory that is renamed to `out` when complete: a killed run leaves no `out`.
    Returns {split: (images, objects)}.
    """
    import json
    import os
    import shutil
    import tempfile
    from pathlib import Path

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    counts = {}
    try:
        (tmp / "annotations").mkdir()
        for split, n, s in (("train", n_train, seed), ("val", n_val, seed + 1)):
            coco, pixels = shapes_coco(n, s, cfg)
            (tmp / split).mkdir()
            for info, img in zip(coco["images"], pixels, strict=True):
                Image.fromarray(img).save(tmp / split / info["file_name"], "PNG")
            (tmp / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
            counts[split] = (len(coco["images"]), len(coco["annotations"]))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 otherwise
        os.rename(tmp, out)  # fails if `out` appeared meanwhile (a non-empty directory is never replaced)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
