"""The retrieval index (`vitlab.retrieval.ImageIndex`) at 10^5-10^6 vectors: exact (flat) vs IVF build and query time,
and IVF's recall@10 against exact search.

    PYTHONPATH=src python benchmarks/bench_index.py                          # 10^5 vectors, 128-d, 3 runs
    PYTHONPATH=src python benchmarks/bench_index.py --n 1000000              # 10^6
    PYTHONPATH=src python benchmarks/bench_index.py --n 100000 --dim 512 --nprobe 1,8,32

The vectors are clustered, as embeddings of real images are (random directions on a sphere are all nearly
orthogonal, where IVF's cells would mean nothing): --clusters centres on the unit sphere, each vector a centre plus
Gaussian noise in a random --intrinsic-dimensional subspace (--spread per ambient dimension on average; isotropic
noise in all dimensions would make every neighbour nearly equidistant), then normalised; queries are fresh draws of
the same law. Each run draws new vectors (seed = run) and builds both indexes (flat: normalise + add; ivf: k-means
on the vectors + add, nlist ~4 sqrt(N)); queries run as one batch of --queries (time per query) and one at a time
(--single of them, median latency). recall@10 of IVF = |IVF top-10 & exact top-10| / 10, averaged over the queries.
Printed: the median of the runs [min-max]. faiss uses --threads threads.
"""

from __future__ import annotations

import argparse
import statistics
import time

import faiss
import numpy as np

from vitlab.retrieval import ImageIndex, default_nlist


def clustered(n: int, dim: int, clusters: int, spread: float, intrinsic: int, rng: np.random.Generator) -> np.ndarray:
    """n unit vectors: a random centre each, plus Gaussian noise in a fixed random `intrinsic`-dimensional subspace
    (std `spread` per ambient dimension on average), normalised."""
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = np.linalg.qr(rng.standard_normal((dim, intrinsic)))[0].T.astype(np.float32)  # (m, D) orthonormal rows
    x = centres[rng.integers(0, clusters, n)]
    for i in range(0, n, 100_000):  # the noise in chunks: (chunk, m) @ (m, D)
        z = rng.standard_normal((min(100_000, n - i), intrinsic)).astype(np.float32)
        x[i : i + len(z)] += spread * np.sqrt(dim / intrinsic) * z @ basis
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def single_latency(index: ImageIndex, queries: np.ndarray, k: int, nprobe: int | None) -> float:
    times = []
    for q in queries:
        _, dt = timed(lambda q=q: index.search(q[None], k, nprobe=nprobe))
        times.append(dt)
    return statistics.median(times)


def one_run(args, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    both = clustered(args.n + args.queries, args.dim, args.clusters, args.spread, args.intrinsic, rng)
    x, q = both[: args.n], both[args.n :]  # the queries: fresh draws of the same law (same centres and subspace)
    paths = [""] * args.n  # the benchmark has no files; ImageIndex needs one entry per vector
    out = {}
    flat, out["flat_build"] = timed(lambda: ImageIndex.build(x, paths, kind="flat"))
    (_, exact), dt = timed(lambda: flat.search(q, args.k))
    out["flat_query"] = dt / len(q)
    out["flat_single"] = single_latency(flat, q[: args.single], args.k, None)
    ivf, out["ivf_build"] = timed(lambda: ImageIndex.build(x, paths, kind="ivf", nlist=args.nlist, seed=seed))
    out["nlist"] = ivf.meta.nlist
    for nprobe in args.nprobe:
        (_, ids), dt = timed(lambda nprobe=nprobe: ivf.search(q, args.k, nprobe=nprobe))
        out[f"ivf{nprobe}_query"] = dt / len(q)
        out[f"ivf{nprobe}_single"] = single_latency(ivf, q[: args.single], args.k, nprobe)
        out[f"ivf{nprobe}_recall"] = float(
            np.mean([len(set(a) & set(b)) / args.k for a, b in zip(ids, exact, strict=True)])
        )
    return out


def spread(values: list[float], fmt: str) -> str:
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000, help="vectors indexed (e.g. 100000 or 1000000)")
    p.add_argument("--dim", type=int, default=128, help="embedding width")
    p.add_argument("--clusters", type=int, default=None, help="centres of the data (default: N / 100)")
    p.add_argument("--spread", type=float, default=0.06, help="noise std per dimension around a centre")
    p.add_argument("--intrinsic", type=int, default=16, help="dimensions the noise spans (embeddings of real "
                                                             "images lie near a low-dimensional set)")  # fmt: skip
    p.add_argument("--queries", type=int, default=1000, help="queries of the batched search")
    p.add_argument("--single", type=int, default=100, help="of them, searched one at a time for the latency")
    p.add_argument("--k", type=int, default=10, help="neighbours per query (recall@k)")
    p.add_argument("--nlist", type=int, default=None, help="IVF cells (default: ~4 sqrt(N))")
    p.add_argument("--nprobe", default="1,4,16,64", help="IVF cells visited per query, comma-separated")
    p.add_argument("--runs", type=int, default=3, help="runs (fresh data each); the median [min-max] is printed")
    p.add_argument("--threads", type=int, default=1, help="faiss threads")
    args = p.parse_args()
    args.nprobe = [int(s) for s in args.nprobe.split(",")]
    args.clusters = args.clusters or max(1, args.n // 100)
    faiss.omp_set_num_threads(args.threads)
    nlist = args.nlist or default_nlist(args.n)
    print(f"N {args.n:,}  dim {args.dim}  clusters {args.clusters}  spread {args.spread} in {args.intrinsic} dims  "
          f"nlist {nlist}  "
          f"queries {args.queries} (batched) / {args.single} (one by one)  k {args.k}  runs {args.runs}  "
          f"faiss {faiss.__version__}, {args.threads} thread(s)")  # fmt: skip
    runs = []
    for seed in range(args.runs):
        runs.append(one_run(args, seed))
        print(f"  run {seed + 1}/{args.runs} done", flush=True)
    col = lambda key: [r[key] for r in runs]  # noqa: E731
    print(f"{'index':<14} {'build s':>24} {'batched ms/query':>26} {'single ms':>26} {'recall@' + str(args.k):>24}")
    ms = lambda key: [1e3 * v for v in col(key)]  # noqa: E731
    print(f"{'flat (exact)':<14} {spread(col('flat_build'), '{:.2f}'):>24} {spread(ms('flat_query'), '{:.3f}'):>26} "
          f"{spread(ms('flat_single'), '{:.3f}'):>26} {'1 (the reference)':>24}")  # fmt: skip
    for nprobe in args.nprobe:
        name = f"ivf nprobe {nprobe}"
        print(f"{name:<14} {spread(col('ivf_build'), '{:.2f}'):>24} "
              f"{spread(ms(f'ivf{nprobe}_query'), '{:.3f}'):>26} {spread(ms(f'ivf{nprobe}_single'), '{:.3f}'):>26} "
              f"{spread(col(f'ivf{nprobe}_recall'), '{:.4f}'):>24}")  # fmt: skip


if __name__ == "__main__":
    main()
