"""`vitlab eval`: top-1 / top-5 and per-class accuracy of a checkpoint on a data set's test split."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    from vitlab.cli.common import add_checkpoint_args

    p = sub.add_parser("eval", help="evaluate a checkpoint: top-1, top-5, per-class accuracy")
    add_checkpoint_args(p)
    p.add_argument("--data", default="digits", help="data spec, as for train (its test split is used)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--test-fraction", type=float, default=0.2, help="as for train, for data without a test split")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from vitlab.cli.common import load_model
    from vitlab.data import ImageTransform, TransformedDataset, load_data
    from vitlab.engine.evaluate import evaluate
    from vitlab.engine.trainer import resolve_device
    from vitlab.errors import ConfigError

    device = resolve_device(args.device)
    model = load_model(args.checkpoint, args.model).to(device)
    splits = load_data(args.data, args.test_fraction)
    cfg = model.cfg
    if model.num_classes != len(splits.classes):
        raise ConfigError(
            f"--data {args.data} has {len(splits.classes)} classes but the checkpoint's head has {model.num_classes}"
        )
    tf = ImageTransform(cfg.img_size, cfg.in_chans, cfg.mean, cfg.std, train=False)
    loader = DataLoader(TransformedDataset(splits.test, tf), args.batch_size)
    r = evaluate(model, loader, len(splits.classes), device, progress=True)
    print(f"{args.checkpoint} on {args.data} ({r.count} test images)")
    print(f"top-1 {r.top1:.4f}  top-5 {r.top5:.4f}  loss {r.loss:.4f}")
    print("per-class accuracy:")
    width = max(len(c) for c in splits.classes)
    for name, acc in zip(splits.classes, r.per_class, strict=True):
        print(f"  {name:<{width}}  {acc:.4f}")
    return 0
