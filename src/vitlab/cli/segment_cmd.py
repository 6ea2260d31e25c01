"""`vitlab segment --checkpoint RUN --labels "background,red circle" IMAGE...`: segment by labels typed at test time.

Every pixel takes the label whose text embedding is nearest its own (an LSeg model: `vitlab train --task lseg`).
For each image, OUT/<name>_seg.png shows the image, the label map in a colour per label with a legend, and the two
blended; the share of pixels per label is printed (`--json` for machines).
"""

from __future__ import annotations

import argparse


def add_parser(sub, argv: list[str]) -> None:
    from vitlab.cli.common import add_checkpoint_args

    p = sub.add_parser("segment", help="language-driven segmentation with an LSeg model (labels typed at test time)")
    p.add_argument("images", nargs="+", help="image files (png, jpg, ...)")
    add_checkpoint_args(p)
    p.add_argument("--labels", required=True, help="comma-separated label words, e.g. 'background,red circle'")
    p.add_argument("--out", required=True, help="directory for the <image>_seg.png pictures (created if missing)")
    p.add_argument("--tokenizer", default=None, help="BPE vocabulary (default: the run's, else CLIP's installed one)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import torch

    from vitlab.cli.common import load_model, run_task_config
    from vitlab.cli.text import printable
    from vitlab.cli.zeroshot_cmd import read_labels
    from vitlab.data import ImageTransform, read_image
    from vitlab.data.datasets import check_image
    from vitlab.data.tokenizer import ClipTokenizer
    from vitlab.engine.tasks import get_task
    from vitlab.engine.trainer import resolve_device
    from vitlab.errors import ConfigError

    labels = read_labels(argparse.Namespace(labels=args.labels, labels_file=None))
    for path in args.images:
        check_image(path)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory")
    targets = [out / f"{Path(p).stem}_seg.png" for p in args.images]
    clash = sorted({t.name for t in targets if targets.count(t) > 1})
    if clash:
        raise ConfigError(f"images with the same name would write the same picture: {', '.join(clash)}")
    device = resolve_device(args.device)
    model = load_model(args.checkpoint, args.model).to(device).eval()
    if not hasattr(model, "segment"):
        raise ConfigError(f"--checkpoint {args.checkpoint} holds a {model.model_name}, which has no dense head; "
                          "train one with `vitlab train --task lseg`")  # fmt: skip
    tcfg = run_task_config(args.checkpoint, get_task("lseg"))
    tokenizer = ClipTokenizer.from_pretrained(args.tokenizer or tcfg.tokenizer, context_length=model.cfg.context_length)
    ids = tokenizer(labels).to(device)
    tf = ImageTransform.for_model(model)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with torch.no_grad():
        for path, target in zip(args.images, targets, strict=True):
            img = read_image(path)
            pred = model.segment(tf(img)[None].to(device), ids).argmax(1)[0].cpu()  # (h, w)
            share = torch.bincount(pred.flatten(), minlength=len(labels)).float() / pred.numel()
            _draw(img, pred.numpy(), labels, target)
            shares = {lab: round(v, 4) for lab, v in zip(labels, share.tolist(), strict=True)}
            results.append({"image": path, "picture": str(target), "share": shares})
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        parts = "  ".join(f"{printable(k)} {v:.3f}" for k, v in sorted(r["share"].items(), key=lambda kv: -kv[1]))
        print(f"{printable(r['image'])}: {parts}  -> {printable(r['picture'])}")
    return 0


def _draw(img, pred, labels: list[str], target) -> None:
    """Image | label map with a legend | blend, written atomically as one PNG."""
    import numpy as np
    from matplotlib.patches import Patch

    from vitlab.engine.report import new_figure, save_figure

    rgb = img.numpy().transpose(1, 2, 0)
    if rgb.shape[-1] == 1:
        rgb = rgb.repeat(3, -1)
    palette = np.array([[0.55, 0.55, 0.55]] + [list(c) for c in _colours(len(labels) - 1)])  # the first label grey
    h, w = pred.shape
    if rgb.shape[:2] != (h, w):  # the model's input size: show the picture at the map's size
        from PIL import Image

        rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
    colour = palette[pred]
    fig = new_figure(9.0, 3.4)
    axes = fig.subplots(1, 3)
    for ax, pic, title in zip(axes, (rgb / 255, colour, 0.5 * rgb / 255 + 0.5 * colour), ("image", "labels", "blend"),
                              strict=True):  # fmt: skip
        ax.imshow(pic, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    present = sorted(set(pred.flatten().tolist()))
    fig.legend(handles=[Patch(color=palette[k], label=labels[k]) for k in present], loc="lower center",
               ncol=min(len(present), 4), fontsize=8)  # fmt: skip
    save_figure(fig, target)


def _colours(n: int):
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return [cmap(i % 20)[:3] for i in range(n)]
