"""`vitlab predict IMAGE...`: the top-5 labels of each image.

On a CPU the model runs as its `optimize_for_cpu_inference` copy (packed linear weights; the same probabilities up to
float32 rounding) unless `--no-optimize` is given.
"""

from __future__ import annotations

import argparse


def add_parser(sub, argv: list[str]) -> None:
    from vitlab.cli.common import add_checkpoint_args

    p = sub.add_parser("predict", help="classify image files and print the top-k labels")
    p.add_argument("images", nargs="+", help="image files (png, jpg, ...)")
    add_checkpoint_args(p)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument(
        "--optimize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="on a CPU, run on pre-packed linear weights (vitlab.runtime.optimize_for_cpu_inference)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from vitlab.cli.common import load_model
    from vitlab.data import ImageTransform, read_image
    from vitlab.engine.trainer import resolve_device
    from vitlab.runtime import optimize_for_cpu_inference

    device = resolve_device(args.device)
    model = load_model(args.checkpoint, args.model).to(device).eval()
    tf = ImageTransform.for_model(model)  # timm's eval crop, read before the model is repacked
    if args.optimize and device.type == "cpu":
        model = optimize_for_cpu_inference(model)  # the plain model is let go: one set of weights stays
    cfg = model.cfg
    images = [tf(read_image(p)) for p in args.images]  # every file is read before any output
    labels = cfg.labels or [str(i) for i in range(model.num_classes)]
    with torch.no_grad():
        probs = model(torch.stack(images).to(device)).float().softmax(dim=-1)
    k = min(args.topk, probs.shape[-1])
    for path, p in zip(args.images, probs, strict=True):
        top = p.topk(k)
        print(path)
        for score, idx in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            print(f"  {labels[idx]:<20} {score:.4f}")
    return 0
