"""vitlab.classic.nl_means beside skimage.restoration.denoise_nl_means on scikit-image's sample images.

    PYTHONPATH=src python benchmarks/nlmeans.py --out benchmarks/nlmeans        # the figures of benchmarks/README.md

For each image: AWGN of --sigma (clipped, seeded), then both filters at matched parameters (scikit-image's
patch_size / patch_distance / h, fast_mode=True, and vitlab's `skimage_arguments` of them, which compute the same
patch distances: see vitlab/classic/nlmeans.py), timed in alternating rounds after one warm-up each, so that drift in
machine speed hits both alike. Printed: PSNR of both and their difference (the issue asks < 0.1 dB), the median time
of each [min-max] and the per-round speed ratio skimage/vitlab as median [min-max]. Then the PSNR of vitlab's filter
(the seed's formula, centred patch --sweep-patch; and with 2σ² taken off f) against h/σ at several noise levels,
plotted to nlmeans_sweep.png: the lecture's rule of thumb is h ≈ σ. Everything goes to nlmeans.json too.

scikit-image's filter is single-threaded Cython; vitlab's runs on --threads torch threads (default 1, the same).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from vitlab.classic import add_noise, nl_means, psnr, skimage_arguments
from vitlab.runtime import keep_freed_memory

IMAGES = ("astronaut", "camera", "chelsea", "coffee")
SWEEP = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 1.75, 2.0, 2.5)


def load(name: str) -> torch.Tensor:
    from skimage import data, img_as_float

    im = img_as_float(getattr(data, name)()).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(im if im.ndim == 2 else np.moveaxis(im, -1, 0)))  # (C, H, W)


def to_hwc(t: torch.Tensor) -> np.ndarray:
    arr = t.double().numpy()
    return arr if arr.ndim == 2 else np.moveaxis(arr, 0, -1)


def from_hwc(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr if arr.ndim == 2 else np.moveaxis(arr, -1, 0)))


def spread(xs: list[float], digits: int = 3) -> str:
    return f"{statistics.median(xs):.{digits}f} [{min(xs):.{digits}f}-{max(xs):.{digits}f}]"


def compare(name: str, args) -> dict:
    from skimage.restoration import denoise_nl_means

    clean = load(name)
    noisy = add_noise(clean, args.sigma, torch.Generator().manual_seed(args.seed))
    noisy_np = to_hwc(noisy)
    h = args.h if args.h is not None else args.sigma
    sk_kwargs = dict(patch_size=args.patch_size, patch_distance=args.patch_distance, h=h, fast_mode=True)
    sk_kwargs["channel_axis"] = None if noisy_np.ndim == 2 else -1
    ours_kwargs = skimage_arguments(args.patch_size, args.patch_distance, h)

    def run_skimage():
        return from_hwc(denoise_nl_means(noisy_np, **sk_kwargs))

    def run_vitlab():
        return nl_means(noisy, **ours_kwargs)

    out_sk, out_vl = run_skimage(), run_vitlab()  # warm-up
    t_sk, t_vl = [], []
    for i in range(args.reps):  # alternate, and alternate who goes first
        for which in ((run_skimage, t_sk), (run_vitlab, t_vl))[:: 1 if i % 2 == 0 else -1]:
            start = time.perf_counter()
            which[0]()
            which[1].append(time.perf_counter() - start)
    ratios = [a / b for a, b in zip(t_sk, t_vl, strict=True)]
    row = {
        "image": name,
        "size": list(clean.shape),
        "psnr_noisy": round(psnr(clean, noisy), 3),
        "psnr_skimage": round(psnr(clean, out_sk), 3),
        "psnr_vitlab": round(psnr(clean, out_vl), 3),
        "seconds_skimage": t_sk,
        "seconds_vitlab": t_vl,
        "speed_ratio": ratios,
        "skimage_kwargs": {k: v for k, v in sk_kwargs.items() if k != "channel_axis"},
        "vitlab_kwargs": ours_kwargs,
    }
    row["psnr_diff"] = round(row["psnr_vitlab"] - row["psnr_skimage"], 3)
    return row


def sweep(name: str, sigma: float, args) -> dict:
    """PSNR of vitlab's filter at h = r·σ for r in SWEEP: the plain formula and with 2σ² taken off f."""
    clean = load(name)
    noisy = add_noise(clean, sigma, torch.Generator().manual_seed(args.seed))
    kw = dict(patch_size=args.sweep_patch, search_window=2 * args.patch_distance + 1)
    return {
        label: [round(psnr(clean, nl_means(noisy, h=r * sigma, sigma=sub, **kw)), 3) for r in SWEEP]
        for label, sub in (("plain", None), ("sigma_subtracted", sigma))
    }


def plot(sweeps: dict, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(sweeps), 4.2))
    axes = fig.subplots(1, len(sweeps), squeeze=False)[0]
    for ax, (sigma, per_image) in zip(axes, sweeps.items(), strict=True):
        for i, (name, curves) in enumerate(per_image.items()):
            for label, style in (("plain", "-"), ("sigma_subtracted", "--")):
                ys = curves[label]
                best = int(np.argmax(ys))
                ax.plot(SWEEP, ys, style, color=f"C{i}", label=f"{name}" + (" (2σ² off f)" if "sub" in label else ""))
                ax.plot(SWEEP[best], ys[best], "o", color=f"C{i}")
        ax.axvline(1.0, color="grey", lw=0.8)
        ax.set_xlabel("h / σ")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(f"σ = {sigma}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"NL-means (vitlab, patch {args.sweep_patch}, search {2 * args.patch_distance + 1}): PSNR vs h/σ, "
                 "dots = best h", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", default=",".join(IMAGES), help="scikit-image sample names, comma-separated")
    p.add_argument("--sigma", type=float, default=0.1, help="noise std")
    p.add_argument("--h", type=float, default=None, help="scikit-image's h (default: --sigma)")
    p.add_argument("--patch-size", type=int, default=5, help="scikit-image's patch_size")
    p.add_argument("--patch-distance", type=int, default=5, help="scikit-image's patch_distance (search radius)")
    p.add_argument("--sweep-patch", type=int, default=5, help="vitlab's (centred) patch size in the h/σ sweep")
    p.add_argument("--sweep-sigmas", default="0.05,0.1,0.2", help="noise levels of the h/σ sweep")
    p.add_argument("--reps", type=int, default=7, help="alternating timed rounds per image")
    p.add_argument("--threads", type=int, default=1, help="torch threads (scikit-image's filter uses one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-sweep", dest="do_sweep", action="store_false", help="skip the h/σ sweep")
    p.add_argument("--out", default=None, help="directory for nlmeans.json and nlmeans_sweep.png")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the vitlab CLI does (vitlab.runtime); numpy's allocations in scikit-image gain too
    names = [n.strip() for n in args.images.split(",") if n.strip()]

    import skimage

    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), scikit-image {skimage.__version__}; "
          f"sigma {args.sigma}, skimage patch_size {args.patch_size}, patch_distance {args.patch_distance}, "
          f"h {args.h if args.h is not None else args.sigma}; {args.reps} alternating rounds")  # fmt: skip
    head = f"{'image':<10} {'size':<12} {'noisy':>6} {'skimage':>8} {'vitlab':>8} {'diff':>6}"
    print(head + f"  {'skimage s':<22} {'vitlab s':<22} skimage/vitlab")
    rows = []
    for name in names:
        r = compare(name, args)
        rows.append(r)
        size = "x".join(str(s) for s in r["size"])
        print(f"{name:<10} {size:<12} {r['psnr_noisy']:>6.2f} {r['psnr_skimage']:>8.3f} {r['psnr_vitlab']:>8.3f} "
              f"{r['psnr_diff']:>+6.3f}  {spread(r['seconds_skimage']):<22} {spread(r['seconds_vitlab']):<22} "
              f"{spread(r['speed_ratio'], 2)}", flush=True)  # fmt: skip
    result = {"args": vars(args), "torch": torch.__version__, "skimage": skimage.__version__, "compare": rows}
    if args.do_sweep:
        sweeps = {}
        print(f"PSNR vs h/σ (vitlab, centred patch {args.sweep_patch}): " + " ".join(f"{r:g}" for r in SWEEP))
        for sigma in (float(v) for v in args.sweep_sigmas.split(",")):
            sweeps[sigma] = {}
            for name in names:
                sweeps[sigma][name] = curves = sweep(name, sigma, args)
                for label, ys in curves.items():
                    best = SWEEP[int(np.argmax(ys))]
                    line = " ".join(f"{y:.2f}" for y in ys)
                    print(f"σ {sigma:<5g} {name:<10} {label:<17} best h/σ {best:<5g} {line}", flush=True)
        result["sweep"] = {"h_over_sigma": list(SWEEP), "psnr": {str(k): v for k, v in sweeps.items()}}
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "nlmeans.json").write_text(json.dumps(result, indent=1) + "\n")
        if args.do_sweep:
            plot(sweeps, args, out / "nlmeans_sweep.png")
        print(f"wrote {out / 'nlmeans.json'}" + (f" and {out / 'nlmeans_sweep.png'}" if args.do_sweep else ""))


if __name__ == "__main__":
    main()
