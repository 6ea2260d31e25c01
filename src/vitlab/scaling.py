"""How cost grows with resolution: attention memory against token count, and Swin against ViT FLOPs.

Both are measured, not derived: memory is the peak of live bytes that PyTorch's allocator reports while one
attention layer runs forward and backward (CUDA memory statistics on a GPU; the profiler's allocation events on a
CPU), and FLOPs come from `vitlab.profiling` (PyTorch's flop counter on the meta device).

A naive attention keeps the (B, H, N, N) probabilities for backward, so its memory grows with N²; SDPA's fused
kernels work block by block and keep one log-sum-exp per row, so theirs grows with N. Global self-attention (ViT)
costs N² multiply-adds per layer while Swin's windows cost N·M², so from 224² to 896² (16x the tokens) ViT's FLOPs
grow far faster than Swin's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from vitlab.layers import Attention
from vitlab.profiling import model_stats
from vitlab.runtime import quiet_stderr


@dataclass
class MemoryPoint:
    tokens: int
    sdpa_mb: float
    naive_mb: float


@dataclass
class FlopsPoint:
    img_size: int
    gflops: dict[str, float]  # model name -> forward GFLOPs per image


def peak_allocated_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak of bytes allocated by PyTorch while fn runs, above what was allocated before it, in MiB."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


def attention_memory(
    tokens: Sequence[int], dim: int = 384, heads: int = 6, batch: int = 1, device: str = "cpu"
) -> list[MemoryPoint]:
    """Peak memory of one attention layer, forward + backward, with SDPA and with an explicit softmax."""
    dev = torch.device(device)
    layer = Attention(dim, heads).to(dev)
    points = []
    for n in tokens:
        mb = {}
        for naive in (False, True):
            layer.capture_attn = naive  # the explicit-softmax path (what vitlab.explain uses)
            x = torch.randn(batch, n, dim, device=dev, requires_grad=True)
            mb[naive] = peak_allocated_mb(lambda x=x: layer(x).sum().backward(), dev)
            layer.attn_probs = None
            layer.zero_grad(set_to_none=True)
        points.append(MemoryPoint(n, mb[False], mb[True]))
    layer.capture_attn = False
    return points


def flops_scaling(models: Sequence[str], img_sizes: Sequence[int]) -> list[FlopsPoint]:
    return [FlopsPoint(s, {m: model_stats(m, img_size=s).flops / 1e9 for m in models}) for s in img_sizes]


def memory_table(points: list[MemoryPoint]) -> str:
    rows = ["| tokens | SDPA MiB | naive MiB | naive / SDPA |", "|---|---|---|---|"]
    rows += [f"| {p.tokens} | {p.sdpa_mb:.1f} | {p.naive_mb:.1f} | {p.naive_mb / p.sdpa_mb:.1f}x |" for p in points]
    return "\n".join(rows)


def flops_table(points: list[FlopsPoint]) -> str:
    models = list(points[0].gflops)
    base = points[0]
    rows = ["| image | " + " | ".join(f"{m} GFLOPs (ratio to {base.img_size}²)" for m in models) + " |"]
    rows.append("|---" * (len(models) + 1) + "|")
    for p in points:
        cells = [f"{p.gflops[m]:.1f} ({p.gflops[m] / base.gflops[m]:.1f}x)" for m in models]
        rows.append(f"| {p.img_size}² | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot_scaling(mem: list[MemoryPoint], flops: list[FlopsPoint], path: Path) -> None:
    """Both sweeps side by side as a PNG: a `Figure` on its own Agg canvas, so no matplotlib backend is switched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    ax_m, ax_f = fig.subplots(1, 2)
    n = [p.tokens for p in mem]
    ax_m.plot(n, [p.naive_mb for p in mem], "o-", label="explicit softmax")
    ax_m.plot(n, [p.sdpa_mb for p in mem], "o-", label="SDPA")
    ax_m.set(xlabel="tokens N", ylabel="peak MiB (forward + backward)", title="one attention layer",
             xscale="log", yscale="log")  # fmt: skip
    ax_m.set_xticks(n, [str(v) for v in n], minor=False)
    ax_m.set_xticks([], minor=True)
    s = [p.img_size for p in flops]
    for m in flops[0].gflops:
        ax_f.plot(s, [p.gflops[m] for p in flops], "o-", label=m)
    ax_f.set(xlabel="image side (px)", ylabel="GFLOPs per image", title="forward FLOPs", yscale="log")
    ax_f.set_xticks(s)
    for ax in (ax_m, ax_f):
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
