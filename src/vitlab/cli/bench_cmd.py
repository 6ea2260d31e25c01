"""`vitlab bench`: inference (and training) throughput beside timm and HF transformers, with ratios and MFU.

Each ratio is vitlab's speed over a peer's: the median of per-round ratios with their min-max over the alternated
rounds, marked `~` when that interval contains 1.0. On a CPU in fp32 the `optimize_for_cpu_inference` copy runs as
peer "vitlab-opt", and a line per model gives its speed over the plain model's.
"""

from __future__ import annotations

import argparse


def add_parser(sub, argv: list[str]) -> None:
    p = sub.add_parser("bench", help="benchmark models against timm / HF transformers in one run")
    p.add_argument("--models", default="vit_small_patch16_224", help="registered name or shell pattern")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--vs", default="timm,hf", help="peers to measure beside vitlab (comma-separated; '' for none)")
    p.add_argument("--reps", type=int, default=5, help="alternating rounds over the peers")
    p.add_argument("--iters", type=int, default=2, help="batches per peer per round")
    p.add_argument("--train", action="store_true", help="also time forward + backward + AdamW step")
    p.add_argument("--compile", action="store_true", help="torch.compile every peer")
    p.add_argument("--profile", action="store_true", help="also print each peer's top operators by self time")
    p.add_argument(
        "--optimize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure vitlab's optimize_for_cpu_inference copy as peer vitlab-opt (CPU fp32, not compiled)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from vitlab.bench import OPTIMIZED, benchmark, gemm_peak
    from vitlab.errors import ConfigError
    from vitlab.registry import get_entry, list_models
    from vitlab.runtime import allocator_tuned

    names = list_models(args.models) if any(c in args.models for c in "*?[") else [get_entry(args.models).name]
    if not names:
        raise ConfigError(f"--models {args.models!r} matches no registered model")
    for flag, v in (("--batch-size", args.batch_size), ("--img-size", args.img_size)):
        if v is not None and v < 1:
            raise ConfigError(f"{flag} must be >= 1, got {v}")
    if args.reps < 1 or args.iters < 1:
        raise ConfigError(f"--reps and --iters take positive integers, got {args.reps} and {args.iters}")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.precision]
    peak = gemm_peak(torch.device(args.device), dtype)
    vs = tuple(v for v in args.vs.split(",") if v)
    alloc = "malloc keeps freed memory" if allocator_tuned() else "default malloc"
    print(f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}, {args.precision}, "
          f"batch {args.batch_size}, {alloc} (every peer); GEMM peak {peak:.1f} GFLOP/s")  # fmt: skip
    head = f"{'model':<32} {'peer':<10} {'img/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'train/s':>8} {'act MB':>8} "
    print(head + f"{'GFLOP/s':>8} {'MFU':>6}  vitlab/peer: median [min-max] of {args.reps} rounds")
    ratios = []
    for name in names:
        r = benchmark(name, args.batch_size, args.img_size, args.precision, args.device, vs, args.reps, args.iters,
                      args.train, args.compile, peak, args.profile, args.optimize)  # fmt: skip
        for p in r.peers:
            ratio = ""
            if p.peer not in ("vitlab", OPTIMIZED):
                ratios.append(r.ratio("vitlab", p.peer))
                ratio = str(ratios[-1])
                if (train := r.ratio("vitlab", p.peer, train=True)) is not None:
                    ratio += f" (train {train})"
            tr = f"{p.train_img_s:8.2f}" if p.train_img_s else f"{'-':>8}"
            mem = f"{p.peak_mem_mb:8.1f}" if p.peak_mem_mb is not None else f"{'-':>8}"
            row = (f"{name:<32} {p.peer:<10} {p.img_s:8.2f} {p.p50_ms:8.1f} {p.p90_ms:8.1f} {tr} "
                   f"{mem} {p.gflops_s:8.1f} {p.mfu:6.1%}  {ratio}")  # fmt: skip
            print(row.rstrip())
        if any(p.peer == OPTIMIZED for p in r.peers):
            ratios.append(r.ratio(OPTIMIZED, "vitlab"))
            print(f"{'':<32} {OPTIMIZED}/vitlab (packed weights over plain, inference): {ratios[-1]}")
        print(f"{'':<32} params {r.params:,}, {r.gflops:.2f} GFLOPs per image")
        for peer, ops in r.profiles.items():
            print(f"  {peer}: top operators by self time (ms per batch, share)")
            for op, ms, share in ops:
                print(f"    {op:<56} {ms:8.2f} {share:6.1%}")
    if ratios:
        print("~: the interval contains 1.0: no measurable difference")
    if args.device == "cpu":
        import resource

        print(f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (all peers)")
    return 0
