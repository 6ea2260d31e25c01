"""`vitlab train`: flags generated from TrainConfig's fields, so the two never drift apart."""

from __future__ import annotations

import argparse
import dataclasses
import typing

from vitlab.engine.config import TrainConfig


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model and write a run directory with a report")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        typ = hints[f.name]
        help_ = f.metadata.get("help", "")
        if typ is bool:
            p.add_argument(flag, action="store_true", help=help_)
            continue
        base = next((t for t in typing.get_args(typ) if t is not type(None)), typ)
        p.add_argument(flag, type=base, default=f.default, help=f"{help_} (default: {f.default})")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from vitlab.engine import train

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    if cfg.clip_grad == 0:
        cfg.clip_grad = None
    result = train(cfg)
    if not result.is_main:
        return 0
    if result.final is None:
        print(f"stopped after epoch {result.metrics[-1]['epoch']}; continue with --resume --out {result.out}")
        return 0
    print(f"run directory: {result.out}")
    print(f"report: {result.out / 'report.md'}")
    print(f"final test accuracy: top-1 {result.final.top1:.4f}  top-5 {result.final.top5:.4f}")
    print(f"wall time: {result.seconds:.1f} s")
    return 0
