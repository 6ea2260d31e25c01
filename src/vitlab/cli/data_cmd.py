"""`vitlab data shapes --out DIR`: write the embedded detection set to disk in COCO format."""

from __future__ import annotations

import argparse


def add_parser(sub, argv: list[str]) -> None:
    p = sub.add_parser("data", help="write an embedded data set to disk (shapes: detection in COCO format)")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    s = kinds.add_parser(
        "shapes",
        help="coloured shapes with boxes: train/val PNGs + annotations/instances_{train,val}.json",
        description="The set `vitlab train --task detection` uses when no --data is given, written to disk; train "
        "on it with --data coco:DIR. DIR must not exist.",
    )
    s.add_argument("--out", required=True, help="directory to create")
    s.add_argument("--train", type=int, default=2000, help="training images (default: 2000)")
    s.add_argument("--val", type=int, default=200, help="validation images (default: 200)")
    s.add_argument("--seed", type=int, default=0, help="train from this seed, val from seed + 1 (default: 0)")
    s.set_defaults(run=run_shapes)


def run_shapes(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vitlab.data.shapes import SHAPE_CLASSES, write_shapes
    from vitlab.errors import ConfigError

    for flag, v in (("--train", args.train), ("--val", args.val)):
        if v < 1:
            raise ConfigError(f"{flag} must be >= 1, got {v}")
    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    out = Path(args.out)
    if out.exists() or out.is_symlink():
        raise ConfigError(f"--out {out} already exists; writing a data set never replaces anything")
    try:
        counts = write_shapes(out, args.train, args.val, args.seed)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write ({e.strerror or e})") from None
    for split, (images, objects) in counts.items():
        print(f"{split}: {images} images, {objects} objects -> {out / split}, {out}/annotations/instances_{split}.json")
    print(f"categories: {', '.join(SHAPE_CLASSES)}; train with: vitlab train --task detection --data coco:{out}")
    return 0
