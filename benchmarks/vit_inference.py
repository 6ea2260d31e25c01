"""ViT inference throughput: vitlab beside HF transformers (and timm when importable), measured in one run.

    .venv/bin/python benchmarks/vit_inference.py --model vit_base_patch16_224 --batch-size 8 --reps 5

Peers are timed alternately, several repetitions each; the median img/s and the ratio vitlab/peer are printed.
Only ratios from one run compare: a busy machine slows every peer alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import vitlab

HF_SIZES = {  # vitlab name -> transformers ViTConfig fields
    "vit_tiny_patch16_224": dict(hidden_size=192, num_attention_heads=3, intermediate_size=768),
    "vit_small_patch16_224": dict(hidden_size=384, num_attention_heads=6, intermediate_size=1536),
    "vit_base_patch16_224": dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}


def build_peers(name: str, device: torch.device) -> dict:
    peers = {"vitlab": vitlab.create_model(name).eval().to(device)}
    try:
        import transformers

        cfg = transformers.ViTConfig(**HF_SIZES[name], num_hidden_layers=12, image_size=224, patch_size=16,
                                     num_labels=1000, layer_norm_eps=1e-6)  # fmt: skip
        hf = transformers.ViTForImageClassification(cfg).eval().to(device)
        peers["hf"] = lambda x, m=hf: m(pixel_values=x).logits
    except ImportError:
        pass
    try:
        import timm

        peers["timm"] = timm.create_model(name, pretrained=False).eval().to(device)
    except ImportError:
        pass
    return peers


@torch.inference_mode()
def time_once(fn, x: torch.Tensor, iters: int) -> float:
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn(x)
    sync()
    return iters * x.shape[0] / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="vit_base_patch16_224", choices=sorted(HF_SIZES))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    peers = build_peers(args.model, device)
    x = torch.randn(args.batch_size, 3, 224, 224, device=device)
    for fn in peers.values():  # warm-up
        time_once(fn, x, 1)
    rates: dict[str, list[float]] = {k: [] for k in peers}
    for _ in range(args.reps):
        for k, fn in peers.items():
            rates[k].append(time_once(fn, x, args.iters))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{args.model}, batch {args.batch_size}, fp32, {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    for k, v in med.items():
        ratio = "" if k == "vitlab" else f"  vitlab/{k} = {med['vitlab'] / v:.3f}"
        print(f"  {k:<7} {v:8.2f} img/s{ratio}")


if __name__ == "__main__":
    main()
