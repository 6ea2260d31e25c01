"""`vitlab models [PATTERN]`: registered models with parameters and FLOPs."""

from __future__ import annotations

import argparse


def add_parser(sub, argv: list[str]) -> None:
    p = sub.add_parser("models", help="list registered models with parameter counts and GFLOPs")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'deit_*'")
    p.add_argument("--img-size", type=int, default=None, help="count FLOPs at this input size")
    p.add_argument("--no-flops", action="store_true", help="names and parameters only (faster)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from vitlab.errors import ConfigError
    from vitlab.profiling import model_stats
    from vitlab.registry import list_models

    if args.img_size is not None and args.img_size < 1:
        raise ConfigError(f"--img-size must be >= 1, got {args.img_size}")
    names = list_models(args.pattern)
    if not names:
        print(f"no model matches {args.pattern!r}")
        return 1
    width = max(len(n) for n in names)
    print(f"{'model':<{width}}  {'img':>4}  {'params':>13}  {'GFLOPs':>8}  {'GMACs':>8}")
    for name in names:
        s = model_stats(name, args.img_size, flops=not args.no_flops)
        counted = not args.no_flops and s.flops > 0  # detectors: not counted (their FLOPs depend on the image)
        fl = f"{s.flops / 1e9:8.3f}" if counted else "-"
        ma = f"{s.gmacs:8.3f}" if counted else "-"
        print(f"{name:<{width}}  {s.img_size:>4}  {s.params:>13,}  {fl:>8}  {ma:>8}")
    print("GFLOPs from torch.utils.flop_counter (multiply-add = 2); papers' 'FLOPs' are GMACs.")
    return 0
