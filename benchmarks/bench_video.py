"""vitlab's ViViT / TimeSformer beside transformers' VivitForVideoClassification / TimesformerForVideoClassification,
same config and same weights: inference speed.

    PYTHONPATH=src python benchmarks/bench_video.py                   # the figures of benchmarks/README.md
    PYTHONPATH=src python benchmarks/bench_video.py --model timesformer_base_patch16_224 --num-frames 8 --img-size 224

The registered variant (with --num-frames / --img-size / --depth overrides: the base models at 224² and 32 frames take
minutes per clip on a 2-core CPU) is built as a random-initialised transformers model of the same shape, saved and
loaded into vitlab (`load_checkpoint` on the directory), so both run the same weights; their logits are compared first
(max abs difference printed). Then each forward on --batch clips is timed in alternating rounds, one warm-up each, so
drift in machine speed hits both alike. Printed: the median seconds per batch [min-max] and the speed ratio vitlab/HF
as the median of per-round ratios [min-max] (`vitlab.bench.speed_ratio`).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from vitlab.bench import speed_ratio
from vitlab.factory import create_model, load_checkpoint


def hf_twin(name: str, directory: str, **overrides):
    """A random-initialised transformers video classifier of `name`'s shape, saved to `directory`, and vitlab's model
    loaded from it."""
    import transformers

    cfg = create_model(name, **overrides).cfg
    common = dict(
        image_size=cfg.img_size, num_frames=cfg.num_frames, num_channels=cfg.in_chans, hidden_size=cfg.embed_dim,
        num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
        intermediate_size=int(cfg.embed_dim * cfg.mlp_ratio), layer_norm_eps=cfg.norm_eps, qkv_bias=cfg.qkv_bias,
        num_labels=cfg.num_classes,
    )  # fmt: skip
    if name.startswith("vivit"):
        if cfg.model != "joint":
            raise SystemExit(f"{name}: transformers has ViViT model 1 (joint) only")
        act = "gelu_fast" if cfg.act == "gelu_tanh" else "gelu"
        config = transformers.VivitConfig(**common, tubelet_size=[cfg.tubelet_t, cfg.patch_size, cfg.patch_size],
                                          hidden_act=act)  # fmt: skip
        hf = transformers.VivitForVideoClassification(config)
    else:
        if cfg.attention_type == "axial":
            raise SystemExit(f"{name}: transformers' TimeSformer has no axial attention")
        config = transformers.TimesformerConfig(**common, patch_size=cfg.patch_size,
                                                attention_type=cfg.attention_type)  # fmt: skip
        hf = transformers.TimesformerForVideoClassification(config)
    with torch.no_grad():  # transformers zero-initialises biases and tables: every weight should matter
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    hf.eval().save_pretrained(directory)
    return hf, load_checkpoint(directory).eval()


def _time(fn, x, iters: int) -> float:
    times = []
    with torch.inference_mode():
        for _ in range(iters):
            t = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vivit_base_patch16x2_224", help="a registered ViViT (model 1) or TimeSformer")
    p.add_argument("--num-frames", type=int, default=8)
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--depth", type=int, default=None, help="blocks (default: the variant's)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=3, help="timed batches per round (the round's median is kept)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    overrides = dict(num_frames=args.num_frames, img_size=args.img_size)
    if args.depth:
        overrides["depth"] = args.depth
    with tempfile.TemporaryDirectory() as d:
        hf, ours = hf_twin(args.model, d, **overrides)
    cfg = ours.cfg
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, cfg.num_frames, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g)
    fns = {"vitlab": lambda v: ours(v), "hf": lambda v: hf(pixel_values=v).logits}
    with torch.inference_mode():
        diff = (fns["vitlab"](x) - fns["hf"](x)).abs().max()
    n = sum(p.numel() for p in ours.parameters())
    print(f"{args.model} ({cfg.num_frames} frames, {cfg.img_size}², depth {cfg.depth}): {n:,} parameters; "
          f"torch {torch.__version__}, transformers {transformers.__version__} "
          f"({hf.config._attn_implementation} attention), {torch.get_num_threads()} threads")  # fmt: skip
    print(f"max |vitlab - HF| of the logits: {diff:.2e}")
    for fn in fns.values():
        _time(fn, x, 1)  # warm-up
    secs: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(args.rounds):
        for k in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            secs[k].append(_time(fns[k], x, args.iters))
    for k, s in secs.items():
        med = statistics.median(s)
        spread = f"[{min(s) * 1e3:.1f}-{max(s) * 1e3:.1f}]"
        print(f"  {k:6s} {args.batch / med:8.2f} clips/s  {med * 1e3:8.1f} ms/batch {spread}")
    print(f"  vitlab/HF speed: {speed_ratio(secs['vitlab'], secs['hf'])} ({args.rounds} rounds of {args.iters})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
