"""Image-caption data: a caption file (CSV or JSONL of image path + caption) and the embedded generated caption set.

A caption set yields (uint8 image (C, H, W), caption str, zero-shot class index or -1). The class index exists where
the data has class words (the generated set: "red circle", ...) so zero-shot classification can be scored; files
give -1.

`captions:FILE` reads
- CSV with a header naming an image column (`path`, `image`, `file` or `filepath`) and a caption column (`caption`,
  `text` or `title`), or
- JSONL: one object per line with the same keys.
Relative image paths are relative to the file's directory. Every problem (a missing column, an empty caption, a
missing image) is reported with the file and line before any training starts.

The generated set (`--data captions`): one shape per image, described by its size, colour, shape and place, e.g. "a
small red circle on the left". Four colour-shape combinations (HELD_OUT) never appear in training; the test split
holds every combination equally often, so zero-shot accuracy on combinations the model never saw paired with a
caption is measured apart from the seen ones.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vitlab.data.datasets import read_image
from vitlab.data.shapes import SHAPE_CLASSES, shape_mask
from vitlab.errors import DataError

__all__ = [
    "COLOURS",
    "HELD_OUT",
    "CaptionSet",
    "caption_rows",
    "generated_captions",
    "read_caption_file",
]

COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 85, 225),
    "yellow": (235, 205, 35),
    "purple": (150, 55, 190),
}
SIZES = {"small": (0.28, 0.36), "large": (0.5, 0.6)}  # the shape's side as a share of the image side
PLACES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
# Never in training; each shape and four of the five colours are held out once, so every word is still seen.
HELD_OUT = (("red", "triangle"), ("green", "cross"), ("blue", "circle"), ("yellow", "square"))
# the class is colour + shape: its prompt is ensembled over every size and place a caption may name
ZERO_SHOT_TEMPLATES = tuple(f"a {size} {{}} {place}" for size in SIZES for place in PLACES.values())

_IMAGE_KEYS = ("path", "image", "file", "filepath")
_CAPTION_KEYS = ("caption", "text", "title")


@dataclass
class CaptionSet(Dataset):
    """Captioned images: in memory (`images` uint8 (N, C, H, W)) or on disk (`paths`), with optional class indices.

    classes: zero-shot class names (may be empty); held_out: the class names never seen in training captions.
    """

    captions: list[str]
    images: torch.Tensor | None = None
    paths: list[Path] | None = None
    labels: list[int] | None = None  # zero-shot class index per sample, or None
    classes: list[str] = field(default_factory=list)
    held_out: list[str] = field(default_factory=list)
    templates: tuple[str, ...] = ("{}",)  # prompt templates for the zero-shot class names
    source: str = ""
    masks: torch.Tensor | None = None  # (N, H, W) bool: the described object's pixels (the generated set)

    def __post_init__(self) -> None:
        n = len(self.images) if self.images is not None else len(self.paths or [])
        if n != len(self.captions) or (self.labels is not None and len(self.labels) != n):
            raise ValueError(f"{self.source}: {n} images, {len(self.captions)} captions")

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, int]:
        img = self.images[i] if self.images is not None else read_image(self.paths[i])
        return img, self.captions[i], -1 if self.labels is None else self.labels[i]

    def subset(self, idx) -> CaptionSet:
        idx = [int(i) for i in idx]
        return CaptionSet(
            [self.captions[i] for i in idx],
            None if self.images is None else self.images[torch.as_tensor(idx, dtype=torch.long)],
            None if self.paths is None else [self.paths[i] for i in idx],
            None if self.labels is None else [self.labels[i] for i in idx],
            self.classes, self.held_out, self.templates, self.source,
            None if self.masks is None else self.masks[torch.as_tensor(idx, dtype=torch.long)],
        )  # fmt: skip


# ----- caption files ---------------------------------------------------------------------------------------------
def _pick(keys, wanted: tuple[str, ...], what: str, where: str) -> str:
    lower = {k.strip().lower(): k for k in keys if isinstance(k, str)}
    for w in wanted:
        if w in lower:
            return lower[w]
    raise DataError(
        f"{where}: no {what} column; name it one of {', '.join(wanted)} (found: {', '.join(map(str, keys))})"
    )


def _rows(path: Path) -> list[tuple[int, str, str]]:
    """(line number, image, caption) rows of a CSV or JSONL caption file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"caption file {path} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"caption file {path} is a directory; give a .csv or .jsonl file") from None
    except UnicodeDecodeError as e:
        raise DataError(f"caption file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    rows = []
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not a JSON object ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{n}: expected a JSON object with an image path and a caption")
            img_key = _pick(obj, _IMAGE_KEYS, "image", f"{path}:{n}")
            cap_key = _pick(obj, _CAPTION_KEYS, "caption", f"{path}:{n}")
            rows.append((n, obj[img_key], obj[cap_key]))
        return rows
    try:
        reader = csv.DictReader(text.splitlines())
        if reader.fieldnames is None:
            raise DataError(f"caption file {path} is empty")
        img_key = _pick(reader.fieldnames, _IMAGE_KEYS, "image", str(path))
        cap_key = _pick(reader.fieldnames, _CAPTION_KEYS, "caption", str(path))
        for n, row in enumerate(reader, start=2):
            rows.append((n, row.get(img_key), row.get(cap_key)))
    except csv.Error as e:
        raise DataError(f"{path}: not a readable CSV file ({e})") from None
    return rows


def caption_rows(path: str | Path) -> list[str]:
    """The captions of a CSV or JSONL caption file (images not checked): a corpus to fit a tokenizer on."""
    path = Path(path).expanduser()
    out = []
    for n, _, caption in _rows(path):
        if not isinstance(caption, str):
            raise DataError(f"{path}:{n}: the caption is not text")
        if caption.strip():
            out.append(caption.strip())
    return out


def read_caption_file(path: str | Path) -> CaptionSet:
    """A CSV or JSONL caption file -> CaptionSet on disk; errors name the file and line."""
    path = Path(path).expanduser()
    samples: list[tuple[Path, str]] = []
    for n, image, caption in _rows(path):
        if not isinstance(image, str) or not image.strip():
            raise DataError(f"{path}:{n}: the image path is empty")
        if not isinstance(caption, str) or not caption.strip():
            raise DataError(f"{path}:{n}: the caption of {image} is empty")
        p = Path(image).expanduser()
        p = p if p.is_absolute() else path.parent / p
        if not p.is_file():
            raise DataError(f"{path}:{n}: image {p} does not exist")
        samples.append((p, caption.strip()))
    if not samples:
        raise DataError(f"caption file {path} lists no images")
    return CaptionSet([c for _, c in samples], paths=[p for p, _ in samples], source=str(path))


# ----- the generated set -----------------------------------------------------------------------------------------
def combo_classes() -> list[str]:
    """Every colour-shape combination, "red circle", ...: the zero-shot classes of the generated set."""
    return [f"{c} {s}" for c in COLOURS for s in SHAPE_CLASSES]


def _draw(
    rng: np.random.Generator, side: int, colour: str, shape: str, size: str, place: str
) -> tuple[np.ndarray, np.ndarray]:
    """(3, side, side) uint8: a grey noisy background with one shape in the named place, and its (side, side) mask."""
    bg = rng.integers(70, 150)
    img = np.clip(bg + rng.normal(0, 12, (side, side, 3)), 0, 255)
    s = int(round(rng.uniform(*SIZES[size]) * side))
    lo, hi = 1, side - s - 1  # top-left corner range that keeps the shape inside
    mid = (side - s) / 2
    jitter = side * 0.06
    if place in ("left", "right"):
        x = lo + rng.uniform(0, 0.15) * side if place == "left" else hi - rng.uniform(0, 0.15) * side
        y = mid + rng.uniform(-jitter, jitter)
    else:
        y = lo + rng.uniform(0, 0.15) * side if place == "top" else hi - rng.uniform(0, 0.15) * side
        x = mid + rng.uniform(-jitter, jitter)
    x0, y0 = int(np.clip(round(x), lo, hi)), int(np.clip(round(y), lo, hi))
    mask = shape_mask(SHAPE_CLASSES.index(shape), (side, side), (x0, y0, x0 + s - 1, y0 + s - 1))
    rgb = np.clip(np.array(COLOURS[colour]) + rng.normal(0, 12, 3), 0, 255)
    img[mask] = rgb
    return img.astype(np.uint8).transpose(2, 0, 1), mask


def generated_captions(n: int, seed: int, train: bool, side: int = 32) -> CaptionSet:
    """`n` captioned shape images. train=True: the HELD_OUT combinations are left out; False: every combination,
    in equal numbers (the test split), each sample labelled with its combination for zero-shot scoring."""
    rng = np.random.default_rng(seed)
    classes = combo_classes()
    held = [f"{c} {s}" for c, s in HELD_OUT]
    pool = [k for k in classes if k not in held] if train else classes
    combos = [pool[i % len(pool)] for i in range(n)]
    rng.shuffle(combos)
    images = np.empty((n, 3, side, side), dtype=np.uint8)
    masks = np.empty((n, side, side), dtype=bool)
    captions, labels = [], []
    for i, combo in enumerate(combos):
        colour, shape = combo.split(" ")
        size, place = rng.choice(list(SIZES)), rng.choice(list(PLACES))
        images[i], masks[i] = _draw(rng, side, colour, shape, size, place)
        captions.append(f"a {size} {colour} {shape} {PLACES[place]}")
        labels.append(classes.index(combo))
    return CaptionSet(
        captions, torch.from_numpy(images), labels=labels, classes=classes, held_out=held,
        templates=ZERO_SHOT_TEMPLATES, source="captions/" + ("train" if train else "val"),
        masks=torch.from_numpy(masks),
    )  # fmt: skip
