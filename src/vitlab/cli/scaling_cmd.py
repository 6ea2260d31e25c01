"""`vitlab scaling`: attention memory against tokens and Swin against ViT FLOPs from 224² up, as tables and a plot."""

from __future__ import annotations

import argparse


def _ints(text: str, flag: str) -> list[int]:
    from vitlab.errors import ConfigError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise ConfigError(f"{flag} takes positive integers, got {text!r}")
    return values


def add_parser(sub, argv: list[str]) -> None:
    p = sub.add_parser("scaling", help="attention memory vs tokens and Swin vs ViT FLOPs vs resolution")
    p.add_argument("--tokens", default="196,784,1764,3136", help="token counts for the attention-memory sweep")
    p.add_argument("--dim", type=int, default=384, help="attention width (384 = ViT-S)")
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--img-sizes", default="224,448,672,896", help="image sides for the FLOPs sweep")
    p.add_argument("--models", default="vit_small_patch16_224,swin_tiny_patch4_window7_224",
                   help="comma-separated registered names for the FLOPs sweep")  # fmt: skip
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/scaling", help="directory for scaling.md and scaling.png")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vitlab.errors import ConfigError
    from vitlab.registry import get_entry
    from vitlab.scaling import attention_memory, flops_scaling, flops_table, memory_table, plot_scaling

    if args.dim < 1 or args.heads < 1 or args.dim % args.heads:
        raise ConfigError(
            f"--dim must be a positive multiple of --heads (>= 1), got --dim {args.dim} --heads {args.heads}"
        )
    tokens = _ints(args.tokens, "--tokens")
    sizes = _ints(args.img_sizes, "--img-sizes")
    models = [get_entry(m.strip()).name for m in args.models.split(",") if m.strip()]
    out = Path(args.out)
    mem = attention_memory(tokens, args.dim, args.heads, device=args.device)
    flops = flops_scaling(models, sizes)
    text = (
        f"## Attention memory (one layer, width {args.dim}, {args.heads} heads, batch 1, forward + backward, "
        f"{args.device})\n\n{memory_table(mem)}\n\n## Forward FLOPs per image\n\n{flops_table(flops)}\n"
    )
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.md").write_text(text + "\n![scaling](scaling.png)\n")
    plot_scaling(mem, flops, out / "scaling.png")
    print(f"wrote {out / 'scaling.md'} and {out / 'scaling.png'}")
    return 0
