"""`vitlab data shapes|captions|sounds --out DIR`: write an embedded set to disk.

shapes: the detection set in COCO format; captions: the generated caption set's test split as PNGs +
captions.jsonl; sounds: the generated sound classes as train/val wav folders."""

from __future__ import annotations

import argparse


def add_parser(sub, argv: list[str]) -> None:
    p = sub.add_parser(
        "data", help="write an embedded data set to disk (shapes: COCO detection; captions; sounds: wav folders)"
    )
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
    c = kinds.add_parser(
        "captions",
        help="the generated caption set's test split: images/*.png + captions.jsonl",
        description="The images `vitlab eval` scores a `--task clip` run on (seed 1, every colour-shape combination "
        "equally, held-out ones included), as files: index them with `vitlab index build`, score the index with "
        "`vitlab index eval --captions DIR/captions.jsonl`, or train on them with --data captions:FILE. DIR must "
        "not exist.",
    )
    c.add_argument("--out", required=True, help="directory to create")
    c.add_argument("--count", type=int, default=800, help="images (default: 800, the task's --captions-val)")
    c.add_argument("--seed", type=int, default=1, help="draw seed (default: 1, the task's test split)")
    c.set_defaults(run=run_captions)
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
    from vitlab.data.shapes import SHAPE_CLASSES, write_shapes
    from vitlab.errors import ConfigError

    out = _check_args(args)
    try:
        counts = write_shapes(out, args.train, args.val, args.seed)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write ({e.strerror or e})") from None
    for split, (images, objects) in counts.items():
        print(f"{split}: {images} images, {objects} objects -> {out / split}, {out}/annotations/instances_{split}.json")
    print(f"categories: {', '.join(SHAPE_CLASSES)}; train with: vitlab train --task detection --data coco:{out}")
    return 0


def run_captions(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from PIL import Image

    from vitlab.data.captions import generated_captions
    from vitlab.errors import ConfigError

    if args.count < 1:
        raise ConfigError(f"--count must be >= 1, got {args.count}")
    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    out = Path(args.out)
    if out.exists() or out.is_symlink():
        raise ConfigError(f"--out {out} already exists; writing a data set never replaces anything")
    data = generated_captions(args.count, seed=args.seed, train=False)
    lines = []
    try:
        (out / "images").mkdir(parents=True)
        for i, (img, caption) in enumerate(zip(data.images, data.captions, strict=True)):
            name = f"images/{i:05d}.png"
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(out / name)
            lines.append(json.dumps({"image": name, "caption": caption}))
        (out / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write ({e.strerror or e})") from None
    print(f"{len(lines)} captioned images -> {out / 'images'}, {out / 'captions.jsonl'}")
    return 0
