"""vitlab's DETR beside transformers' DetrForObjectDetection, same config and same weights: inference speed.

    PYTHONPATH=src python benchmarks/detr.py                      # detr_resnet50, 2 images of 512x672, the README's
    PYTHONPATH=src python benchmarks/detr.py --height 800 --width 1066 --batch 1 --rounds 5

A random-initialised HF DetrForObjectDetection of DETR-R50's shape (transformers' own ResNet-50 backbone, frozen
BatchNorm, 100 queries, 91 COCO labels) is converted into vitlab's `detr_resnet50` (`convert_detr_hf`), so both run
the same weights; their class logits and boxes are compared first (max abs difference printed). The forward pass
on a padded batch (the second image smaller, its pixel mask honoured by both) is then timed in alternating rounds,
one warm-up each, so drift in machine speed hits both alike. Printed: the median seconds per batch of each [min-max]
and the speed ratio vitlab/HF as the median of per-round ratios [min-max] (`vitlab.bench.speed_ratio`; `~`: the
interval holds 1.0, no difference).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vitlab.bench import speed_ratio
from vitlab.factory import create_model
from vitlab.weights.detr import convert_detr_hf


def hf_detr_r50(num_labels: int = 91):
    """transformers' DETR-R50 with random weights (no download: the backbone is transformers' ResNet, not timm's)."""
    import transformers

    backbone = transformers.ResNetConfig(
        embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3], layer_type="bottleneck",
        out_features=["stage4"],
    )  # fmt: skip
    cfg = transformers.DetrConfig(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False,
                                  num_labels=num_labels)  # fmt: skip
    torch.manual_seed(0)
    return transformers.DetrForObjectDetection(cfg).eval()


def _time(fn, iters: int) -> float:
    times = []
    with torch.inference_mode():
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=672)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=3, help="timed batches per round (the round's median is kept)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    hf = hf_detr_r50()
    ours = create_model("detr_resnet50", num_classes=hf.config.num_labels).eval()
    ours.load_state_dict(convert_detr_hf(hf.state_dict()), strict=True)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.height, args.width, generator=g)
    mask = torch.ones(args.batch, args.height, args.width, dtype=torch.bool)
    if args.batch > 1:  # the last image is 3/4 of the size, zero-padded, as a collated batch of two sizes
        mask[-1, args.height * 3 // 4 :] = False
        mask[-1, :, args.width * 3 // 4 :] = False
        images[-1][:, ~mask[-1]] = 0
    with torch.inference_mode():
        ref, out = hf(pixel_values=images, pixel_mask=mask.long()), ours(images, mask)
    n = sum(p.numel() for p in ours.parameters())
    print(f"detr_resnet50: {n:,} parameters; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} threads; batch {args.batch} of {args.height}x{args.width}")  # fmt: skip
    print(f"max |vitlab - HF|: logits {(out.logits - ref.logits).abs().max():.2e}, "
          f"boxes {(out.pred_boxes - ref.pred_boxes).abs().max():.2e}")  # fmt: skip
    fns = {"vitlab": lambda: ours(images, mask), "hf": lambda: hf(pixel_values=images, pixel_mask=mask.long())}
    for fn in fns.values():
        _time(fn, 1)  # warm-up
    secs: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(args.rounds):
        for k in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            secs[k].append(_time(fns[k], args.iters))
    for k, s in secs.items():
        med = statistics.median(s)
        print(f"  {k:6s} {args.batch / med:6.2f} images/s  {med * 1e3:8.1f} ms/batch "
              f"[{min(s) * 1e3:.1f}-{max(s) * 1e3:.1f}]")  # fmt: skip
    print(f"  vitlab/HF speed: {speed_ratio(secs['vitlab'], secs['hf'])} ({args.rounds} rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
