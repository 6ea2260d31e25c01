"""vitlab's DETR beside transformers' DetrForObjectDetection, same config and same weights: inference and training.

    PYTHONPATH=src python benchmarks/detr.py                      # detr_resnet50, 2 images of 512x672, the README's
    PYTHONPATH=src python benchmarks/detr.py --train --rounds 3 --iters 1   # + forward, matching, loss, backward
    PYTHONPATH=src python benchmarks/detr.py --height 800 --width 1066 --batch 1 --rounds 5

A random-initialised HF DetrForObjectDetection of DETR-R50's shape (transformers' own ResNet-50 backbone, frozen
BatchNorm, 100 queries, 91 COCO labels) is converted into vitlab's `detr_resnet50` (`convert_detr_hf`), so both run
the same weights; their class logits and boxes are compared first (max abs difference printed). The forward pass
on a padded batch (the second image smaller, its pixel mask honoured by both) is then timed in alternating rounds,
one warm-up each, so drift in machine speed hits both alike. Printed: the median seconds per batch of each [min-max]
and the speed ratio vitlab/HF as the median of per-round ratios [min-max] (`vitlab.bench.speed_ratio`; `~`: the
interval holds 1.0, no difference). `--train` then times a training step of each, in train mode (dropout on,
BatchNorm frozen in both) on the same random targets (--objects boxes per image): forward, Hungarian matching and
the set losses on the final and every auxiliary decoder output (transformers with `auxiliary_loss=True`), the
weighted sum and its backward; and the share of vitlab's step spent in its matcher (`hungarian_match`, scipy).
Both train the same parameters: transformers leaves its backbone's requires_grad off in this configuration, so
vitlab's backbone is frozen too for the comparison (the script says which).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import vitlab.losses.detection.criterion as criterion_module
from vitlab.bench import speed_ratio
from vitlab.factory import create_model
from vitlab.losses.detection import SetCriterion
from vitlab.weights.detr import convert_detr_hf


def hf_detr_r50(num_labels: int = 91):
    """transformers' DETR-R50 with random weights (no download: the backbone is transformers' ResNet, not timm's)."""
    import transformers

    backbone = transformers.ResNetConfig(
        embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3], layer_type="bottleneck",
        out_features=["stage4"],
    )  # fmt: skip
    cfg = transformers.DetrConfig(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False,
                                  num_labels=num_labels, auxiliary_loss=True)  # fmt: skip
    torch.manual_seed(0)
    return transformers.DetrForObjectDetection(cfg).eval()


def _time(fn, iters: int, grad: bool = False) -> float:
    times = []
    with torch.inference_mode(not grad):
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def _alternate(fns: dict, rounds: int, iters: int, grad: bool = False) -> dict[str, list[float]]:
    for fn in fns.values():
        _time(fn, 1, grad)  # warm-up
    secs: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for k in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            secs[k].append(_time(fns[k], iters, grad))
    return secs


def _print(secs: dict[str, list[float]], batch: int, what: str) -> None:
    for k, s in secs.items():
        med = statistics.median(s)
        print(f"  {what} {k:6s} {batch / med:6.2f} images/s  {med * 1e3:8.1f} ms/batch "
              f"[{min(s) * 1e3:.1f}-{max(s) * 1e3:.1f}]")  # fmt: skip
    print(f"  {what} vitlab/HF speed: {speed_ratio(secs['vitlab'], secs['hf'])} ({len(secs['hf'])} rounds)")


def train_steps(ours, hf, images, mask, objects: int):
    """(vitlab step, HF step, matcher seconds list): each a forward, the matched set losses and their backward."""
    g = torch.Generator().manual_seed(1)
    n = hf.config.num_labels
    labels = [torch.randint(0, n, (objects,), generator=g) for _ in images]
    boxes = [torch.cat([0.2 + 0.6 * torch.rand(objects, 2, generator=g), 0.05 + 0.3 * torch.rand(objects, 2,
             generator=g)], 1) for _ in images]  # fmt: skip
    targets = [{"class_labels": lb, "boxes": bx} for lb, bx in zip(labels, boxes, strict=True)]
    criterion, matcher_secs = SetCriterion(), []
    real_match = criterion_module.hungarian_match

    def timed_match(*a, **k):
        t = time.perf_counter()
        out = real_match(*a, **k)
        matcher_secs.append(time.perf_counter() - t)
        return out

    def ours_step():
        criterion_module.hungarian_match = timed_match
        try:
            out = ours(images, mask)
            criterion.total(criterion(out.logits, out.pred_boxes, labels, boxes, aux=out.aux)).backward()
        finally:
            criterion_module.hungarian_match = real_match
        ours.zero_grad(set_to_none=True)

    def hf_step():
        hf(pixel_values=images, pixel_mask=mask.long(), labels=targets).loss.backward()
        hf.zero_grad(set_to_none=True)

    return ours_step, hf_step, matcher_secs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=672)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=3, help="timed batches per round (the round's median is kept)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--train", action="store_true", help="also time a training step (forward, matching, loss, backward)")
    p.add_argument("--objects", type=int, default=6, help="random target boxes per image for --train (default: 6)")
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
    _print(_alternate(fns, args.rounds, args.iters), args.batch, "infer")
    if args.train:
        ours.train(), hf.train()
        # transformers (5.x) builds this backbone with requires_grad off everywhere; train the same parameters here
        frozen = {n for n, p in hf.named_parameters() if not p.requires_grad and n.startswith("model.backbone.")}
        if frozen:
            ours.backbone.requires_grad_(False)
        print(f"  train: {len(frozen)} backbone tensors frozen in transformers' model, "
              f"{'so vitlab backbone frozen too' if frozen else 'none frozen'}")  # fmt: skip
        ours_step, hf_step, matcher_secs = train_steps(ours, hf, images, mask, args.objects)
        secs = _alternate({"vitlab": ours_step, "hf": hf_step}, args.rounds, args.iters, grad=True)
        _print(secs, args.batch, "train")
        per_step = sum(matcher_secs) / (len(secs["vitlab"]) * args.iters + 1)  # + the warm-up step
        share = per_step / statistics.median(secs["vitlab"])
        print(f"  train matcher (6 decoder outputs, {args.objects} targets/image): {per_step * 1e3:.1f} ms a step, "
              f"{share:.2%} of vitlab's step")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
