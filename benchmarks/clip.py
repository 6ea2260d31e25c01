"""vitlab's ClipModel beside transformers' CLIPModel, same config and same weights: image and text encoding speed.

    PYTHONPATH=src python benchmarks/clip.py                       # ViT-B/32, the figures of benchmarks/README.md
    PYTHONPATH=src python benchmarks/clip.py --model clip_vit_base_patch16_224 --rounds 6

A random-initialised HF CLIPModel of the variant's shape is saved and loaded into vitlab (`load_checkpoint` on the
directory), so both run the same weights; their embeddings are compared first (max abs difference printed). Then
`encode_image` on --image-batch images (vs `get_image_features`) and `encode_text` on --text-batch full 77-token
captions (vs `get_text_features`) are timed in alternating rounds, one warm-up each, so drift in machine speed hits
both alike. Printed per encoder: the median seconds per batch of each [min-max] and the speed ratio vitlab/HF as the
median of per-round ratios [min-max] (`vitlab.bench.speed_ratio`; `~`: the interval holds 1.0, no difference).
Where MKL packing is available, `vitlab-opt` (`vitlab.runtime.optimize_for_cpu_inference`, the copy `vitlab predict`
uses on a CPU) runs as a third peer in the same rounds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from vitlab.bench import speed_ratio
from vitlab.factory import create_model, load_checkpoint
from vitlab.runtime import mkl_packing_supported, optimize_for_cpu_inference


def hf_twin(name: str, directory: str):
    """An HF CLIPModel of `name`'s shape (random weights), saved to `directory`, and vitlab's model loaded from it."""
    import transformers

    cfg = create_model(name).cfg
    act = "quick_gelu" if cfg.quick_gelu else "gelu"
    hidden = lambda w: int(w * cfg.mlp_ratio)  # noqa: E731
    config = transformers.CLIPConfig(
        vision_config=dict(
            image_size=cfg.img_size, patch_size=cfg.patch_size, hidden_size=cfg.vision_width,
            num_hidden_layers=cfg.vision_depth, num_attention_heads=cfg.vision_heads,
            intermediate_size=hidden(cfg.vision_width), hidden_act=act, num_channels=cfg.in_chans,
        ),
        text_config=dict(
            vocab_size=cfg.vocab_size, hidden_size=cfg.text_width, num_hidden_layers=cfg.text_depth,
            num_attention_heads=cfg.text_heads, intermediate_size=hidden(cfg.text_width),
            max_position_embeddings=cfg.context_length, hidden_act=act, eos_token_id=cfg.vocab_size - 1,
        ),
        projection_dim=cfg.embed_dim,
    )  # fmt: skip
    hf = transformers.CLIPModel(config).eval()
    hf.save_pretrained(directory)
    return hf, load_checkpoint(directory).eval()


def _time(fn, x, iters: int) -> float:
    times = []
    with torch.inference_mode():
        for _ in range(iters):
            t = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def _features(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5 returns an output object


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="clip_vit_base_patch32_224")
    p.add_argument("--image-batch", type=int, default=8)
    p.add_argument("--text-batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=5, help="timed batches per round (the round's median is kept)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    with tempfile.TemporaryDirectory() as d:
        hf, ours = hf_twin(args.model, d)
    cfg = ours.cfg
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.image_batch, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g)
    ids = torch.randint(1, cfg.vocab_size - 2, (args.text_batch, cfg.context_length), generator=g)
    ids[:, 0], ids[:, -1] = cfg.vocab_size - 2, cfg.vocab_size - 1  # start ... end-of-text (full context)
    with torch.inference_mode():
        d_img = ours.encode_image(images) - F.normalize(_features(hf.get_image_features(pixel_values=images)), dim=-1)
        d_txt = ours.encode_text(ids) - F.normalize(_features(hf.get_text_features(input_ids=ids)), dim=-1)
    n = sum(p.numel() for p in ours.parameters())
    print(f"{args.model}: {n:,} parameters; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"max |vitlab - HF| of the unit embeddings: image {d_img.abs().max():.2e}, text {d_txt.abs().max():.2e}")
    peers = {
        "image": {
            "vitlab": lambda x: ours.encode_image(x),
            "hf": lambda x: hf.get_image_features(pixel_values=x),
        },
        "text": {"vitlab": lambda x: ours.encode_text(x), "hf": lambda x: hf.get_text_features(input_ids=x)},
    }
    if mkl_packing_supported():  # vitlab's CPU inference copy (pre-packed linear weights), as `vitlab bench` times it
        opt = optimize_for_cpu_inference(ours)
        peers["image"]["vitlab-opt"] = lambda x: opt.encode_image(x)
        peers["text"]["vitlab-opt"] = lambda x: opt.encode_text(x)
    inputs = {"image": images, "text": ids}
    for part, fns in peers.items():
        x = inputs[part]
        for fn in fns.values():
            _time(fn, x, 1)  # warm-up
        secs: dict[str, list[float]] = {k: [] for k in fns}
        for r in range(args.rounds):
            order = list(fns) if r % 2 == 0 else list(fns)[::-1]
            for k in order:
                secs[k].append(_time(fns[k], x, args.iters))
        batch = len(x)
        unit = "images" if part == "image" else "captions"
        for k, s in secs.items():
            med = statistics.median(s)
            print(f"  {part:5s} {k:6s} {batch / med:8.1f} {unit}/s  {med * 1e3:7.1f} ms/batch "
                  f"[{min(s) * 1e3:.1f}-{max(s) * 1e3:.1f}]")  # fmt: skip
        print(f"  {part:5s} vitlab/HF speed: {speed_ratio(secs['vitlab'], secs['hf'])} ({args.rounds} rounds)")
        if "vitlab-opt" in secs:
            print(f"  {part:5s} vitlab-opt/HF speed: {speed_ratio(secs['vitlab-opt'], secs['hf'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
