"""`vitlab index build` embeds image files into a faiss index; `vitlab index eval` scores its recall@K on captions.

vitlab index build --checkpoint runs/clip --out runs/index photos/ extra.png    # exact (flat) below 10^5 images
vitlab index build --checkpoint runs/clip --out runs/index --kind ivf --nprobe 8 photos/
vitlab index eval runs/index --captions caps.jsonl      # recall@1/5/10 both ways, the CLIP evaluator's rule
vitlab search runs/index "a red circle" -k 5            # see search_cmd

Folders are searched recursively for images (png, jpg, ...), sorted by path; a file given twice is indexed once.
The index directory stores the absolute path of each image and the checkpoint, so `vitlab search` needs no
--checkpoint unless the run has moved. A directory holding an index is replaced only with --overwrite.
"""

from __future__ import annotations

import argparse


def add_parser(sub, argv: list[str]) -> None:
    from vitlab.cli.common import add_checkpoint_args
    from vitlab.retrieval import IVF_THRESHOLD, KINDS

    p = sub.add_parser("index", help="build a retrieval index of image embeddings (faiss), or score its recall@K")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    b = actions.add_parser(
        "build",
        help="embed images with an image-text model into a faiss index directory",
        description="Encodes every image with the checkpoint's image tower, L2-normalises the embeddings and "
        "indexes them by inner product (cosine): exact (flat) or IVF (k-means cells; a query visits --nprobe).",
    )
    b.add_argument("images", nargs="+", help="image files and folders (searched recursively)")
    add_checkpoint_args(b)
    b.add_argument("--out", required=True, help="index directory to write")
    b.add_argument("--kind", choices=KINDS, default="auto",
                   help=f"flat (exact), ivf (approximate), or auto: ivf from {IVF_THRESHOLD:,} images on")  # fmt: skip
    b.add_argument("--nlist", type=int, default=None, help="ivf: k-means cells (default: ~4 sqrt(N))")
    b.add_argument("--nprobe", type=int, default=16, help="ivf: cells a query visits (search can override it)")
    b.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    b.add_argument("--tokenizer", default=None, help="BPE vocabulary text queries use (default: the run's)")
    b.add_argument("--overwrite", action="store_true", help="replace the index already in --out")
    b.set_defaults(run=run_build)
    e = actions.add_parser(
        "eval",
        help="recall@1/5/10 both ways of an index on a caption file of its images",
        description="text -> image: each distinct caption searches the index, a hit when a returned image carries "
        "it; image -> text: each captioned image's stored vector against the distinct captions (exact). Images of "
        "the index without a caption are distractors. With a flat index this equals `vitlab eval`'s recall.",
    )
    e.add_argument("index", help="index directory (from `vitlab index build`)")
    e.add_argument("--captions", required=True, help="CSV or JSONL of image path and caption (as --data captions:FILE)")
    add_query_args(e)
    e.add_argument("--json", action="store_true", help="print the recalls as JSON")
    e.set_defaults(run=run_eval)


def add_query_args(p) -> None:
    p.add_argument("--checkpoint", default=None, help="the model that built the index (default: the one it records)")
    p.add_argument("--model", default=None, help="architecture, when --checkpoint does not name one")
    p.add_argument("--tokenizer", default=None, help="BPE vocabulary (default: the one the index records)")
    p.add_argument("--nprobe", type=int, default=None, help="ivf: cells a query visits (default: the index's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")


def image_files(specs: list[str]) -> list[str]:
    """Absolute paths of the images given as files or found in folders (recursively, sorted), each once."""
    from pathlib import Path

    from vitlab.data.datasets import IMAGE_SUFFIXES
    from vitlab.errors import DataError

    out: dict[str, None] = {}
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            out.update((str(p.resolve()), None) for p in found)
        elif path.is_file():
            out[str(path.resolve())] = None
        else:
            raise DataError(f"image {path} does not exist")
    return list(out)


def load_image_text_model(checkpoint: str, model_name: str | None, device: str):
    from vitlab.cli.common import load_model
    from vitlab.engine.trainer import resolve_device
    from vitlab.errors import ConfigError

    model = load_model(checkpoint, model_name).to(resolve_device(device)).eval()
    if not hasattr(model, "encode_text"):
        raise ConfigError(f"--checkpoint {checkpoint} holds a {model.model_name}, not an image-text model")
    return model


def query_model(index, args):
    """The model and tokenizer that embed queries for `index`: the ones it records, or --checkpoint/--tokenizer."""
    from pathlib import Path

    from vitlab.data.tokenizer import ClipTokenizer
    from vitlab.errors import ConfigError

    checkpoint = args.checkpoint or index.meta.checkpoint
    if checkpoint is None:
        raise ConfigError(f"index {args.index} records no checkpoint; give the model that built it with --checkpoint")
    if args.checkpoint is None and not Path(checkpoint).exists():
        raise ConfigError(f"index {args.index} was built with {checkpoint}, which no longer exists; give its new "
                          "place with --checkpoint")  # fmt: skip
    model = load_image_text_model(checkpoint, args.model or index.meta.model, args.device)
    if model.cfg.embed_dim != index.meta.dim:
        raise ConfigError(f"--checkpoint {checkpoint} embeds into {model.cfg.embed_dim} dimensions but index "
                          f"{args.index} holds {index.meta.dim}-d embeddings: not the model that built it")  # fmt: skip
    tokenizer = ClipTokenizer.from_pretrained(args.tokenizer or index.meta.tokenizer,
                                              context_length=model.cfg.context_length)  # fmt: skip
    return model, tokenizer


def run_build(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from vitlab.cli.common import run_task_config
    from vitlab.cli.text import printable
    from vitlab.engine.tasks import get_task
    from vitlab.errors import ConfigError
    from vitlab.retrieval import ImageIndex, check_out, encode_images

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_out(Path(args.out), args.overwrite)  # before minutes of encoding
    paths = image_files(args.images)
    model = load_image_text_model(args.checkpoint, args.model, args.device)
    tokenizer = args.tokenizer or run_task_config(args.checkpoint, get_task("clip")).tokenizer
    t0 = time.perf_counter()
    z = encode_images(model, paths, args.batch_size, progress=True)
    t1 = time.perf_counter()
    index = ImageIndex.build(z, paths, kind=args.kind, nlist=args.nlist, nprobe=args.nprobe,
                             checkpoint=str(Path(args.checkpoint).resolve()), model=args.model,
                             tokenizer=str(Path(tokenizer).resolve()) if tokenizer else None)  # fmt: skip
    index.save(args.out, overwrite=args.overwrite)
    m = index.meta
    kind = f"ivf, {m.nlist} cells, nprobe {m.nprobe}" if m.kind == "ivf" else "flat, exact"
    print(printable(f"indexed {m.count} images ({kind}; {m.dim}-d embeddings of {model.model_name}) -> {args.out}"))
    print(
        f"  encode {t1 - t0:.2f} s ({m.count / max(t1 - t0, 1e-9):.1f} img/s)  index {time.perf_counter() - t1:.2f} s"
    )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from vitlab.cli.text import printable
    from vitlab.data.captions import read_caption_file
    from vitlab.errors import DataError
    from vitlab.retrieval import ImageIndex, encode_texts, index_recall

    index = ImageIndex.load(args.index)
    data = read_caption_file(args.captions)
    row_of = {p: i for i, p in enumerate(index.paths)}
    rows = [row_of.get(str(Path(p).resolve()), -1) for p in data.paths]
    missing = [str(p) for p, r in zip(data.paths, rows, strict=True) if r < 0]
    if missing:
        raise DataError(f"--captions {args.captions}: {len(missing)} of its images are not in index {args.index} "
                        f"(first: {missing[0]}); build the index over them")  # fmt: skip
    model, tokenizer = query_model(index, args)
    # distinct captions merged by their token ids, as the evaluator merges them
    distinct: dict[tuple, int] = {}
    texts, caption_of = [], []
    for caption in data.captions:
        key = tuple(tokenizer.encode(caption))
        if key not in distinct:
            distinct[key] = len(texts)
            texts.append(caption)
        caption_of.append(distinct[key])
    recall = index_recall(index, encode_texts(model, tokenizer, texts), rows, caption_of, nprobe=args.nprobe)
    out = {"r_mean": sum(recall.values()) / len(recall), **recall, "captioned_images": len(set(rows)),
           "rows": len(rows), "captions": len(texts), "indexed": len(index), "kind": index.meta.kind}  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(printable(f"recall on {args.captions}: {len(rows)} captioned images, {len(texts)} distinct captions, "
                    f"index of {len(index)} ({index.meta.kind})"))  # fmt: skip
    print("  ".join(f"{k} {out[k]:.4f}" for k in ("r_mean", *recall)))
    return 0
