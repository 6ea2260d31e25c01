"""`vitlab search INDEX "a red circle" -k 5`: the images of an index nearest to a text, or to an image (`--image`).

The query is embedded by the model the index records (`--checkpoint` if it has moved) and searched by cosine
similarity. Printed: rank, score (cosine, -1..1) and path, best first; `--json` prints them as JSON and
`--grid OUT.png` draws the query beside its top-k images.
"""

from __future__ import annotations

import argparse


def add_parser(sub, argv: list[str]) -> None:
    from vitlab.cli.index_cmd import add_query_args

    p = sub.add_parser("search", help="search an image index by text or by image (vitlab index build)")
    p.add_argument("index", help="index directory (from `vitlab index build`)")
    p.add_argument("text", nargs="?", default=None, help="text query, e.g. 'a red circle'")
    p.add_argument("--image", default=None, help="search by this image instead of a text")
    p.add_argument("-k", "--topk", dest="k", type=int, default=5, help="results, best first (default: 5)")
    add_query_args(p)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--grid", default=None, help="draw the query and its results to this PNG")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json

    from vitlab.cli.index_cmd import query_model
    from vitlab.cli.text import printable
    from vitlab.data.datasets import check_image
    from vitlab.errors import ConfigError
    from vitlab.retrieval import ImageIndex, encode_images, encode_texts

    if (args.text is None) == (args.image is None):
        raise ConfigError('give one query: a text ("a red circle") or --image PATH')
    if args.text is not None and not args.text.strip():
        raise ConfigError("the text query is empty")
    if args.k < 1:
        raise ConfigError(f"-k must be >= 1, got {args.k}")
    if args.nprobe is not None and args.nprobe < 1:
        raise ConfigError(f"--nprobe must be >= 1, got {args.nprobe}")
    if args.grid and not args.grid.lower().endswith(".png"):
        raise ConfigError(f"--grid writes a PNG; name it *.png, got {args.grid!r}")
    if args.image is not None:
        check_image(args.image)
    index = ImageIndex.load(args.index)
    model, tokenizer = query_model(index, args)
    q = encode_images(model, [args.image]) if args.image is not None else encode_texts(model, tokenizer, [args.text])
    scores, ids = index.search(q, args.k, nprobe=args.nprobe)
    results = [{"rank": r + 1, "score": float(s), "path": index.paths[i]}
               for r, (s, i) in enumerate(zip(scores[0], ids[0], strict=True)) if i >= 0]  # fmt: skip
    query = {"image": args.image} if args.image is not None else {"text": args.text}
    if args.grid:
        draw_grid(query, results, args.grid)
    if args.json:
        print(json.dumps({"query": query, "index": args.index, "results": results}, indent=2))
        return 0
    for r in results:
        print(printable(f"{r['rank']:3d}  {r['score']:.4f}  {r['path']}"))
    if args.grid:
        print(printable(f"grid: {args.grid}"))
    return 0


def draw_grid(query: dict, results: list[dict], out: str) -> None:
    """One row: the query (its image, or its text), then each result with its rank and score."""
    import textwrap
    from pathlib import Path

    from vitlab.data import read_image
    from vitlab.engine.report import new_figure, save_figure
    from vitlab.errors import DataError

    n = 1 + len(results)
    fig = new_figure(1.9 * n, 2.3)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if "image" in query:
        axes[0].imshow(_rgb(read_image(query["image"])))
        axes[0].set_title("query", fontsize=9)
    else:
        axes[0].text(0.5, 0.5, "\n".join(textwrap.wrap(query["text"], 18)[:6]), ha="center", va="center",
                     fontsize=9, transform=axes[0].transAxes)  # fmt: skip
        axes[0].set_title("query (text)", fontsize=9)
    for ax, r in zip(axes[1:], results, strict=True):
        try:
            ax.imshow(_rgb(read_image(r["path"])))
        except DataError:  # moved or deleted since the index was built: the rest of the grid is still drawn
            ax.text(0.5, 0.5, "cannot read", ha="center", va="center", fontsize=8, transform=ax.transAxes)
        ax.set_title(f"#{r['rank']}  {r['score']:.3f}", fontsize=9)
        ax.set_xlabel(textwrap.shorten(Path(r["path"]).name, 22), fontsize=7)
    save_figure(fig, Path(out))


def _rgb(img):
    """uint8 (C, H, W) -> (H, W, 3) for imshow."""
    x = img.permute(1, 2, 0).numpy()
    return x.repeat(3, axis=2) if x.shape[2] == 1 else x
