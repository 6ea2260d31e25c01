"""`vitlab detect --checkpoint RUN IMAGE...`: boxes, class names and scores for each image, drawn and printed.

Every file is decoded before any output. Each image gets OUT/<stem>.detections.png with its detections drawn;
a file of that name is replaced only when `vitlab detect` wrote it (its PNG metadata says so), so the same command
can be typed twice but never overwrites a user's image. `--json` prints the detections as one JSON document.
"""

from __future__ import annotations

import argparse

SOFTWARE = "vitlab detect"


def add_parser(sub, argv: list[str]) -> None:
    from vitlab.cli.common import add_checkpoint_args

    p = sub.add_parser("detect", help="detect objects in image files: draw boxes (PNG) and print them")
    p.add_argument("images", nargs="+", help="image files (png, jpg, ...)")
    add_checkpoint_args(p)
    p.add_argument("--out", default="detections", help="directory for the drawn images (default: detections)")
    p.add_argument("--threshold", type=float, default=0.5, help="keep detections scoring at least this (0-1)")
    p.add_argument("--topk", type=int, default=100, help="at most this many detections per image, best first")
    p.add_argument("--min-size", type=int, default=None, help="resize the shorter side to this first (as trained)")
    p.add_argument("--max-size", type=int, default=None, help="cap on the longer side after resizing")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument("--json", action="store_true", help="print the detections as JSON instead of text")
    p.set_defaults(run=run)


def _check_args(args) -> None:
    import math

    from vitlab.errors import ConfigError

    if not (math.isfinite(args.threshold) and 0 <= args.threshold <= 1):
        raise ConfigError(f"--threshold must be in [0, 1], got {args.threshold}")
    for flag, v in (("--topk", args.topk), ("--batch-size", args.batch_size)):
        if v < 1:
            raise ConfigError(f"{flag} must be >= 1, got {v}")
    for flag, v in (("--min-size", args.min_size), ("--max-size", args.max_size)):
        if v is not None and v < 16:
            raise ConfigError(f"{flag} must be >= 16 pixels, got {v}")


def _targets(images: list[str], out) -> list:
    """OUT/<stem>.detections.png per image; a name taken twice, or by a file vitlab did not write, is refused."""
    from pathlib import Path

    from PIL import Image

    from vitlab.errors import ConfigError

    paths, seen = [], {}
    for src in images:
        target = out / f"{Path(src).stem}.detections.png"
        if target in seen:
            raise ConfigError(f"{src} and {seen[target]} would both be drawn to {target}; detect them separately")
        seen[target] = src
        if target.exists():
            try:
                with Image.open(target) as im:
                    ours = im.info.get("Software") == SOFTWARE
            except Exception:  # not an image at all: certainly not ours
                ours = False
            if not ours:
                raise ConfigError(f"{target} exists and was not written by vitlab detect; choose another --out")
        paths.append(target)
    return paths


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import torch
    from PIL import Image, PngImagePlugin

    from vitlab.cli.common import load_model
    from vitlab.cli.text import printable
    from vitlab.data import read_image
    from vitlab.data.batches import collate_detection
    from vitlab.data.coco import DetectionTransform
    from vitlab.data.datasets import check_image
    from vitlab.data.draw import draw_detections
    from vitlab.engine.evaluators.detection import postprocess
    from vitlab.engine.trainer import resolve_device
    from vitlab.errors import ConfigError
    from vitlab.weights.io import atomic_write

    _check_args(args)
    for path in args.images:
        check_image(path)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory")
    targets = _targets(args.images, out)
    device = resolve_device(args.device)
    model = load_model(args.checkpoint, args.model).to(device).eval()
    if not hasattr(model, "box_head"):
        raise ConfigError(f"--checkpoint {args.checkpoint} holds a {model.model_name}, not a detector; use predict")
    labels = [printable(c) for c in model.cfg.labels] or [str(i) for i in range(model.num_classes)]
    pc = model.pretrained_cfg
    tf = DetectionTransform(pc["input_size"][0], pc["mean"], pc["std"], args.min_size, args.max_size)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", SOFTWARE)  # marks the file as ours: the next run may replace it
    report = []
    for start in range(0, len(args.images), args.batch_size):
        paths = args.images[start : start + args.batch_size]
        raw = [read_image(p) for p in paths]
        batch = collate_detection([tf(img, empty) for img in raw]).to(device)
        with torch.no_grad():
            outputs = model(batch.images, batch.pixel_mask)
        sizes = [tuple(img.shape[1:]) for img in raw]
        for path, img, target, (scores, cls, boxes) in zip(
            paths, raw, targets[start:], postprocess(outputs.logits, outputs.pred_boxes, sizes), strict=False
        ):
            order = scores.argsort(descending=True)
            order = order[scores[order] >= args.threshold][: args.topk]
            dets = [
                {"label": int(c), "score": float(s), "box": [round(v, 1) for v in b]}
                for c, s, b in zip(cls[order].tolist(), scores[order].tolist(), boxes[order].tolist(), strict=True)
            ]
            drawn = draw_detections(img, dets, labels, scale=1)
            atomic_write(target, lambda tmp, a=drawn: Image.fromarray(a).save(tmp, "PNG", pnginfo=info))
            report.append({
                "image": path, "width": img.shape[2], "height": img.shape[1], "drawn": str(target),
                "detections": [{"category": labels[d["label"]], **d} for d in dets],
            })  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for r in report:
        print(f"{printable(r['image'])}: {len(r['detections'])} detection(s) -> {printable(r['drawn'])}")
        for d in r["detections"]:
            x0, y0, x1, y1 = d["box"]
            print(f"  {d['category']:<16} {d['score']:.3f}  [{x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f}]")
    return 0
