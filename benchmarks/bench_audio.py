"""vitlab's AST beside transformers' ASTForAudioClassification (same config, same weights), and vitlab's log-mel
front end beside transformers' ASTFeatureExtractor.

    PYTHONPATH=src python benchmarks/bench_audio.py          # Speech Commands' base (128 x 128) and the CPU config
    PYTHONPATH=src python benchmarks/bench_audio.py --models ast_base_patch16_stride10_audioset --batch 1 --rounds 3

A random-initialised HF model of each variant's shape is saved and loaded into vitlab (`load_checkpoint` on the
directory), so both run the same weights; the logits are compared first (max abs difference printed). Inference on
--batch spectrograms is then timed in alternating rounds (one warm-up each, the order flipped every round) so drift
in machine speed hits both alike. Printed: the median seconds per batch [min-max] of each peer and the speed ratio
vitlab/HF, the median of per-round ratios [min-max] (`vitlab.bench.speed_ratio`; `~`: the interval holds 1.0).
The front end: --clips 2-second clips to normalised banks, vitlab's `SpectrogramTransform` vs the extractor's numpy
path (transformers without torchaudio), timed the same way, after checking they agree.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import numpy as np
import torch

from vitlab.bench import speed_ratio
from vitlab.data.audio import SpectrogramTransform
from vitlab.data.sounds import GeneratedSounds
from vitlab.factory import create_model, load_checkpoint


def hf_twin(name: str, directory: str):
    """An HF ASTForAudioClassification of `name`'s shape (random weights), saved, and vitlab's model loaded from it."""
    import transformers

    cfg = create_model(name).cfg
    config = transformers.ASTConfig(
        hidden_size=cfg.embed_dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
        intermediate_size=int(cfg.embed_dim * cfg.mlp_ratio), patch_size=cfg.patch_size,
        frequency_stride=cfg.fstride, time_stride=cfg.tstride, num_mel_bins=cfg.num_mel_bins,
        max_length=cfg.max_length, num_labels=cfg.num_classes,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.ASTForAudioClassification(config).eval()
    with torch.no_grad():  # HF zero-initialises the tokens and the position table: give them values
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    hf.save_pretrained(directory)
    return hf, load_checkpoint(directory).eval()


def _round(fn, iters: int) -> float:
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def alternate(fns: dict, rounds: int, iters: int) -> dict[str, list[float]]:
    for fn in fns.values():
        _round(fn, 1)  # warm-up
    secs: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for k in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            secs[k].append(_round(fns[k], iters))
    return secs


def report(title: str, secs: dict[str, list[float]], per_batch: int, unit: str) -> None:
    for k, s in secs.items():
        med = statistics.median(s)
        print(f"  {title} {k:6s} {per_batch / med:9.1f} {unit}/s  {med * 1e3:8.2f} ms/batch "
              f"[{min(s) * 1e3:.2f}-{max(s) * 1e3:.2f}]")  # fmt: skip
    print(f"  {title} vitlab/HF speed: {speed_ratio(secs['vitlab'], secs['hf'])} ({len(secs['vitlab'])} rounds)")


def bench_model(name: str, batch: int, rounds: int, iters: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        hf, ours = hf_twin(name, d)
    cfg = ours.cfg
    bank = torch.randn(batch, cfg.max_length, cfg.num_mel_bins, generator=torch.Generator().manual_seed(0))
    image = bank.transpose(1, 2)[:, None].contiguous()  # (B, 1, F, T)
    with torch.inference_mode():
        diff = (ours(image) - hf(input_values=bank).logits).abs().max().item()
        fns = {"vitlab": lambda: ours(image), "hf": lambda: hf(input_values=bank)}
        secs = alternate(fns, rounds, iters)
    n = sum(p.numel() for p in ours.parameters())
    print(f"{name}: {n:,} parameters, {ours.patch_embed.num_patches} patches, batch {batch}; max |vitlab - HF| "
          f"logits {diff:.2e}")  # fmt: skip
    report("model", secs, batch, "clips")


def bench_frontend(clips: int, rounds: int, iters: int) -> None:
    import transformers

    data = GeneratedSounds(-(-clips // 8), seed=0)
    waves = [data[i][0] for i in range(clips)]
    ours = SpectrogramTransform(128, 1024)
    with warnings.catch_warnings():  # its note that one of 128 Kaldi triangles catches no FFT bin (so does ours)
        warnings.simplefilter("ignore", UserWarning)
        hf = transformers.ASTFeatureExtractor(num_mel_bins=128, max_length=1024)
    ref = hf(waves, sampling_rate=16_000, return_tensors="np")["input_values"]
    diff = max(np.abs(ours.bank(w) - r).max() for w, r in zip(waves, ref, strict=True))
    print(f"front end: {clips} clips of 2 s -> 128 x 1024 normalised banks; max |vitlab - HF| {diff:.2e}")
    fns = {"vitlab": lambda: [ours.bank(w) for w in waves], "hf": lambda: hf(waves, sampling_rate=16_000)}
    report("bank ", alternate(fns, rounds, iters), clips, "clips")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="ast_base_patch16_stride10_speechcommands,ast_micro_patch16_stride10_64x200")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--iters", type=int, default=2, help="timed batches per round (the round's median is kept)")
    p.add_argument("--clips", type=int, default=16, help="clips per front-end batch (0: skip the front end)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads")
    for name in args.models.split(","):
        bench_model(name, args.batch, args.rounds, args.iters)
    if args.clips:
        bench_frontend(args.clips, args.rounds, args.iters)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
