"""MAE pre-training step time: 75% masking vs every token (same ViT-B encoder + 512x8 decoder), and vs transformers.

    PYTHONPATH=src python benchmarks/mae.py                      # ViT-B/16 at 224, batch 4: benchmarks/README.md
    PYTHONPATH=src python benchmarks/mae.py --batch 64 --device cuda --rounds 5

A random-initialised transformers `ViTMAEForPreTraining` (its default config: ViT-B/16, decoder 512 wide, 8 blocks,
16 heads) is saved and loaded into vitlab (`load_checkpoint`), so both hold the same weights; with the same noise
their losses are compared first. A training step is forward, loss and backward on one batch of random images
(`--optimizer` adds the AdamW update, the same work whatever the masking):
- vitlab at the model's 75% masking (the encoder runs on 49 of 196 patches, the decoder on all 196 + class token);
- vitlab with mask ratio 0 (every patch through the encoder; the loss on every patch): the full-token step that
  MAE's ~3x claim (sec. 3 / Table 2: 75% masking, an 8-block decoder, 2.8x-4.1x wall clock) compares with;
- transformers at 75% masking (same weights, same noise).
Rounds alternate the order, one warm-up step each first. Printed: median seconds per step [min-max] of each, and the
ratios as the median of per-round ratios [min-max] (`vitlab.bench.speed_ratio`). `--clock cpu` times the process's
CPU seconds instead of wall-clock ones: on a shared machine (other jobs on the cores) with `--threads 1` that is the
work a step does, where wall time measures the neighbours.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from vitlab.bench import speed_ratio
from vitlab.factory import load_checkpoint
from vitlab.losses.mae import masked_mse


def twins(directory: str, device: torch.device):
    """transformers' ViTMAEForPreTraining (default = base config, random weights) and vitlab's model loaded from it."""
    import transformers

    hf = transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig())
    hf.save_pretrained(directory)
    return hf.to(device).train(), load_checkpoint(directory).to(device).train()


def vitlab_step(model, images: torch.Tensor, noise: torch.Tensor, mask_ratio: float):
    out = model(images, noise, mask_ratio)
    mask = out.mask if mask_ratio > 0 else torch.ones_like(out.mask)  # full tokens: every patch in the loss
    return masked_mse(pred=out.pred, target=model.target(images), mask=mask)


def make_steps(hf, ours, images, noise, optimizer: bool) -> dict:
    opts = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95))
            for k, m in (("hf", hf), ("ours", ours))}  # fmt: skip

    def step(loss_fn, opt):
        def run():
            loss = loss_fn()
            loss.backward()
            if optimizer:
                opt.step()
            opt.zero_grad(set_to_none=True)

        return run

    return {
        "vitlab 75%": step(lambda: vitlab_step(ours, images, noise, 0.75), opts["ours"]),
        "vitlab 0%": step(lambda: vitlab_step(ours, images, noise, 0.0), opts["ours"]),
        "HF 75%": step(lambda: hf(pixel_values=images, noise=noise).loss, opts["hf"]),
    }


def _time(fn, iters: int, device: torch.device, clock=time.perf_counter) -> float:
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = clock()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(clock() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=2, help="timed steps per round (the round's median is kept)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--optimizer", action="store_true", help="include the AdamW update in each step")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall-clock or process CPU seconds")
    args = p.parse_args(argv)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    if args.clock == "cpu" and args.device != "cpu":
        p.error("--clock cpu measures CPU work: use it with --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    device = torch.device(args.device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        hf, ours = twins(d, device)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, 224, 224, generator=g).to(device)
    noise = torch.rand(args.batch, 196, generator=g).to(device)
    with torch.no_grad():
        d_loss = abs(vitlab_step(ours, images, noise, 0.75).item() - hf(pixel_values=images, noise=noise).loss.item())
    n = sum(p.numel() for p in ours.parameters())
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"mae_vit_base_patch16: {n:,} parameters; batch {args.batch} at 224x224; torch {torch.__version__}, "
          f"transformers {transformers.__version__}; {where}")  # fmt: skip
    print(f"|vitlab - HF| loss with the same weights and noise: {d_loss:.2e}")
    steps = make_steps(hf, ours, images, noise, args.optimizer)
    print(f"step = forward + loss + backward{' + AdamW' if args.optimizer else ''}; {args.clock}-clock seconds")
    for fn in steps.values():
        _time(fn, 1, device)  # warm-up (and the optimisers' state)
    secs: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(args.rounds):
        order = list(steps) if r % 2 == 0 else list(steps)[::-1]
        for k in order:
            secs[k].append(_time(steps[k], args.iters, device, clock))
    for k, s in secs.items():
        med = statistics.median(s)
        print(f"  {k:11s} {med:8.3f} s/step [{min(s):.3f}-{max(s):.3f}]  {args.batch / med:7.2f} images/s")
    print(f"  75% masking vs full tokens (vitlab): {speed_ratio(secs['vitlab 75%'], secs['vitlab 0%'])}x "
          f"({args.rounds} rounds)")  # fmt: skip
    print(f"  vitlab vs HF at 75%: {speed_ratio(secs['vitlab 75%'], secs['HF 75%'])}x ({args.rounds} rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
