"""`vitlab data shapes|sounds --out DIR`: write an embedded set to disk (detection in COCO format; sound folders)."""

from __future__ import annotations

import argparse


def add_parser(sub, argv: list[str]) -> None:
    p = sub.add_parser("data", help="write an embedded data set to disk (shapes: COCO detection; sounds: wav folders)")
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
    a = kinds.add_parser(
        "sounds",
        help="generated sound classes (tones, chirps, sirens, noise bursts, clicks): train/val wav folders",
        description="The set `vitlab train --task audio` uses when no --data is given, written as "
        "OUT/train/CLASS/*.wav and OUT/val/CLASS/*.wav (16 kHz, 16-bit); train on it with --data DIR. DIR must not "
        "exist.",
    )
    a.add_argument("--out", required=True, help="directory to create")
    a.add_argument("--train", type=int, default=100, help="training clips per class (default: 100)")
    a.add_argument("--val", type=int, default=25, help="validation clips per class (default: 25)")
    a.add_argument("--seed", type=int, default=0, help="train from this seed, val from seed + 1 (default: 0)")
    a.set_defaults(run=run_sounds)


def _check_args(args: argparse.Namespace):
    from pathlib import Path

    from vitlab.errors import ConfigError

    for flag, v in (("--train", args.train), ("--val", args.val)):
        if v < 1:
            raise ConfigError(f"{flag} must be >= 1, got {v}")
    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    out = Path(args.out)
    if out.exists() or out.is_symlink():
        raise ConfigError(f"--out {out} already exists; writing a data set never replaces anything")
    return out


def run_sounds(args: argparse.Namespace) -> int:
    from vitlab.data.sounds import SOUND_CLASSES, write_sounds
    from vitlab.errors import ConfigError

    out = _check_args(args)
    try:
        counts = write_sounds(out, args.train, args.val, args.seed)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write ({e.strerror or e})") from None
    for split, n in counts.items():
        print(f"{split}: {n} clips -> {out / split}")
    print(f"classes: {', '.join(SOUND_CLASSES)}; train with: vitlab train --task audio --data {out}")
    return 0


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
