"""Throughput benchmarks: vitlab beside timm and HF transformers, measured alternately in one run.

Only ratios measured in the same run compare: a busy machine slows every peer alike. A ratio is therefore taken
per round (every peer runs once per round, in rotated order) and reported as the median over rounds with its
min-max (`Ratio`): an interval containing 1.0 means no measurable difference. On a CPU in float32 the plain model and
its `vitlab.runtime.optimize_for_cpu_inference` copy ("vitlab-opt") are two peers of the same run, so the table shows
whether packing pays off on this machine. FLOPs come from `vitlab.profiling` (the same architecture for every peer),
so achieved GFLOP/s and the fraction of the machine's GEMM peak (MFU) are comparable too.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from vitlab.factory import create_model
from vitlab.profiling import model_stats
from vitlab.runtime import optimize_for_cpu_inference
from vitlab.scaling import peak_allocated_mb

OPTIMIZED = "vitlab-opt"  # the optimize_for_cpu_inference copy of vitlab's model, as a peer


@dataclass
class PeerResult:
    peer: str
    img_s: float  # median inference images per second
    p50_ms: float  # median latency of one batch
    p90_ms: float
    train_img_s: float | None = None  # forward + backward + AdamW step
    peak_mem_mb: float | None = None  # MiB allocated by one inference batch beyond the weights (peak)
    gflops_s: float = 0.0
    mfu: float = 0.0  # achieved / GEMM peak
    round_s: list[float] = field(default_factory=list)  # per round: median seconds of one inference batch
    train_round_s: list[float] = field(default_factory=list)  # per round: seconds of one training step


@dataclass(frozen=True)
class Ratio:
    """How many times faster one peer is than another: the median of per-round ratios and their range."""

    median: float
    low: float
    high: float

    @property
    def contains_one(self) -> bool:
        """The rounds disagree on which is faster: no measurable difference."""
        return self.low <= 1.0 <= self.high

    def __str__(self) -> str:
        return f"{self.median:.2f} [{self.low:.2f}-{self.high:.2f}]" + ("~" if self.contains_one else "")


def speed_ratio(ours_s: Sequence[float], peer_s: Sequence[float]) -> Ratio:
    """Our speed over the peer's, from seconds per round (the peer's time over ours in each round, then median).

    Rounds pair up because both ran in the same stretch of machine time; the ratio within a round cancels the drift
    that absolute times carry.
    """
    if not ours_s or len(ours_s) != len(peer_s):
        raise ValueError(f"speed_ratio: ours_s and peer_s need the same number of rounds (> 0), got "
                         f"{len(ours_s)} and {len(peer_s)}")  # fmt: skip
    if min(ours_s) <= 0:
        raise ValueError(f"speed_ratio: ours_s must be positive seconds, got {min(ours_s)}")
    per_round = [p / o for o, p in zip(ours_s, peer_s, strict=True)]
    return Ratio(statistics.median(per_round), min(per_round), max(per_round))


@dataclass
class BenchResult:
    model: str
    params: int
    gflops: float  # per image, forward
    peers: list[PeerResult] = field(default_factory=list)
    profiles: dict[str, list[tuple[str, float, float]]] = field(default_factory=dict)  # peer -> top operators

    def peer(self, name: str) -> PeerResult:
        for p in self.peers:
            if p.peer == name:
                return p
        raise KeyError(f"no peer {name!r} in this result; measured: {[p.peer for p in self.peers]}")

    def ratio(self, ours: str, peer: str, train: bool = False) -> Ratio | None:
        """`ours`' speed over `peer`'s (inference, or training steps), or None where either was not measured."""
        a, b = self.peer(ours), self.peer(peer)
        a_s, b_s = (a.train_round_s, b.train_round_s) if train else (a.round_s, b.round_s)
        return speed_ratio(a_s, b_s) if a_s and b_s else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_peak(device: torch.device, dtype: torch.dtype, n: int | None = None, reps: int = 5) -> float:
    """Best GFLOP/s of an n x n x n matrix product: the machine's practical ceiling for these models.

    n defaults to 2048 on a CPU and 8192 on a GPU, where smaller products do not fill the device.
    """
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def hf_peer(name: str, model: nn.Module) -> Callable | None:
    """The same architecture in HF transformers, random-initialised, or None where HF has no equivalent."""
    try:
        import transformers as T
    except ImportError:
        return None
    cfg, fam = model.cfg, type(model).__name__
    common = dict(num_labels=max(cfg.num_classes, 1), image_size=cfg.img_size, num_channels=cfg.in_chans)
    if fam == "VisionTransformer" and not cfg.distilled and cfg.global_pool == "token" and cfg.pos_embed == "learned":
        c = T.ViTConfig(hidden_size=cfg.embed_dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
                        intermediate_size=int(cfg.embed_dim * cfg.mlp_ratio), patch_size=cfg.patch_size,
                        layer_norm_eps=cfg.norm_eps, **common)  # fmt: skip
        m = T.ViTForImageClassification(c)
    elif fam == "SwinTransformer":
        last_map = cfg.img_size // cfg.patch_size // 2 ** (len(cfg.depths) - 1)
        if last_map < cfg.window_size:  # HF's Swin cannot run a map smaller than its window
            return None
        c = T.SwinConfig(embed_dim=cfg.embed_dim, depths=list(cfg.depths), num_heads=list(cfg.num_heads),
                         window_size=cfg.window_size, patch_size=cfg.patch_size, **common)  # fmt: skip
        m = T.SwinForImageClassification(c)
    elif fam == "ConvNeXt":
        c = T.ConvNextConfig(depths=list(cfg.depths), hidden_sizes=list(cfg.dims), patch_size=cfg.patch_size, **common)
        m = T.ConvNextForImageClassification(c)
    elif fam == "ResNet":
        exp = 4 if cfg.block == "bottleneck" else 1
        c = T.ResNetConfig(depths=list(cfg.layers), hidden_sizes=[w * exp for w in cfg.widths],
                           layer_type=cfg.block, embedding_size=cfg.stem_width, **common)  # fmt: skip
        m = T.ResNetForImageClassification(c)
    else:
        return None
    m.eval()
    return _Logits(m)


class _Logits(nn.Module):
    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(pixel_values=x).logits


def timm_peer(name: str) -> nn.Module | None:
    try:
        import timm
    except ImportError:
        return None
    try:
        return timm.create_model(name, pretrained=False).eval()
    except RuntimeError:  # unknown to timm
        return None


def profile_ops(m: nn.Module, x: torch.Tensor, top: int = 8, iters: int = 3) -> list[tuple[str, float, float]]:
    """Where inference time goes: the top operators by self time, as (name, ms per batch, share of the total)."""
    from torch.profiler import ProfilerActivity, profile

    from vitlab.runtime import quiet_stderr

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.device.type == "cuda" else [])
    attr = "self_device_time_total" if x.device.type == "cuda" else "self_cpu_time_total"
    with torch.inference_mode():
        m(x)
        with quiet_stderr(), profile(activities=acts) as prof:
            for _ in range(iters):
                m(x)
            _sync(x.device)
    ops = [(e.key, getattr(e, attr)) for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    total = sum(t for _, t in ops) or 1.0
    ops.sort(key=lambda kv: -kv[1])
    return [(k, t / iters / 1e3, t / total) for k, t in ops[:top]]


def _rotated(keys: list[str], r: int) -> list[str]:
    return keys[r % len(keys) :] + keys[: r % len(keys)]


def _time_inference(m: nn.Module, x: torch.Tensor, iters: int) -> list[float]:
    times = []
    with torch.inference_mode():
        for _ in range(iters):
            _sync(x.device)
            t = time.perf_counter()
            m(x)
            _sync(x.device)
            times.append(time.perf_counter() - t)
    return times


class _Trainer:
    """One optimisation step at a time, so the benchmark can alternate peers (warm-up step on creation)."""

    def __init__(self, m: nn.Module, x: torch.Tensor) -> None:
        self.m, self.x = m, x
        self.opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        self.y = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        self.step()  # allocates gradients and optimiser state

    def step(self) -> float:
        self.m.train()
        _sync(self.x.device)
        t = time.perf_counter()
        nn.functional.cross_entropy(self.m(self.x).float(), self.y).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        _sync(self.x.device)
        self.m.eval()
        return time.perf_counter() - t


def benchmark(
    name: str,
    batch_size: int = 8,
    img_size: int | None = None,
    precision: str = "fp32",
    device: str = "cpu",
    vs: tuple[str, ...] = ("timm", "hf"),
    reps: int = 5,
    iters: int = 2,
    train: bool = False,
    compile: bool = False,
    peak_gflops: float | None = None,
    profile: bool = False,
    optimize: bool = True,
) -> BenchResult:
    """Measure vitlab's `name` and its peers alternately; `optimize` adds the packed-weight copy (CPU fp32, eager).

    The optimized copy is timed for inference only: in training mode it is the plain model.
    """
    dev = torch.device(device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    stats = model_stats(name, img_size)
    ours = create_model(name, img_size=img_size).eval().to(dev, dtype)
    peers: dict[str, nn.Module] = {"vitlab": ours}
    if optimize and dev.type == "cpu" and dtype == torch.float32 and not compile:
        peers[OPTIMIZED] = optimize_for_cpu_inference(ours)
    if "timm" in vs and (t := timm_peer(name)) is not None and img_size in (None, ours.cfg.img_size):
        peers["timm"] = t
    if "hf" in vs and (h := hf_peer(name, ours)) is not None:
        peers["hf"] = h
    for k in peers:
        peers[k] = peers[k].to(dev, dtype)
        if compile:
            peers[k] = torch.compile(peers[k])
    S = ours.cfg.img_size
    x = torch.randn(batch_size, ours.cfg.in_chans, S, S, device=dev, dtype=dtype)
    for m in peers.values():  # warm-up (and compilation; the optimized copy packs its weights here)
        _time_inference(m, x, 1)
    rounds: dict[str, list[list[float]]] = {k: [] for k in peers}  # peer -> per round, seconds of each batch
    # Alternate peers so drift in machine speed hits all of them alike, and rotate who goes first in a round.
    for r in range(reps):
        for k in _rotated(list(peers), r):
            rounds[k].append(_time_inference(peers[k], x, iters))
    # Memory a forward pass allocates on top of the weights (CUDA statistics, or the CPU profiler's allocations).
    mem = {k: peak_allocated_mb(lambda m=m: _time_inference(m, x, 1), dev) for k, m in peers.items()}
    train_times: dict[str, list[float]] = {}
    if train:
        trainers = {k: _Trainer(m, x) for k, m in peers.items() if k != OPTIMIZED}
        train_times = {k: [] for k in trainers}
        for r in range(reps):
            for k in _rotated(list(trainers), r):
                train_times[k].append(trainers[k].step())
    result = BenchResult(name, stats.params, stats.flops / 1e9)
    if profile:
        result.profiles = {k: profile_ops(m, x) for k, m in peers.items()}
    peak = peak_gflops or gemm_peak(dev, dtype)
    for k in peers:
        ts = sorted(t for batch_times in rounds[k] for t in batch_times)
        med = statistics.median(ts)
        r = PeerResult(k, batch_size / med, med * 1e3, ts[min(len(ts) - 1, int(0.9 * len(ts)))] * 1e3)
        r.round_s = [statistics.median(batch_times) for batch_times in rounds[k]]
        if k in train_times:
            r.train_round_s = train_times[k]
            r.train_img_s = batch_size / statistics.median(train_times[k])
        r.peak_mem_mb = mem.get(k)
        r.gflops_s = r.img_s * stats.flops / 1e9
        r.mfu = r.gflops_s / peak
        result.peers.append(r)
    return result
