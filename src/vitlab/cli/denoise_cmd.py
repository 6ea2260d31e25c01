"""`vitlab denoise IMAGE --sigma 0.1 --out DIR`: non-local means (vitlab.classic.nlmeans) on an image.

The image (a file, or `skimage:NAME` for one of scikit-image's sample images, e.g. `skimage:astronaut`) is taken as
the clean reference y: the command adds white Gaussian noise of --sigma (clipped to [0, 1], seeded), denoises it and
writes noisy.png, denoised.png and metrics.json (PSNR and SSIM of both against y, from skimage.metrics, computed on
the float images before they are rounded to 8 bits). With --sigma 0 no noise is added and the image itself is
denoised (then give --h). Nothing is ever replaced: --out may be an existing directory, but not one that already
holds any of the three files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

OUTPUTS = ("noisy.png", "denoised.png", "metrics.json")
SKIMAGE_PREFIX = "skimage:"


def add_parser(sub, argv: list[str]) -> None:
    p = sub.add_parser("denoise", help="non-local means: add Gaussian noise to an image, denoise it, PSNR/SSIM")
    p.add_argument("image", help=f"image file, or {SKIMAGE_PREFIX}NAME for a scikit-image sample (astronaut, camera)")
    p.add_argument("--sigma", type=float, required=True, help="std of the added noise, in [0, 1] grey levels")
    p.add_argument("--h", type=float, default=None, help="filtering parameter of exp(-f/h^2) (default: --sigma)")
    p.add_argument("--patch-size", type=int, default=5, help="side of the compared patches")
    p.add_argument(
        "--search", "--search-window", dest="search", type=int, default=11, help="side (odd) of the search window"
    )
    p.add_argument(
        "--subtract-noise",
        action="store_true",
        help="take the noise's 2 sigma^2 off each patch distance (scikit-image's sigma=; then h of 0.6-0.8 sigma does "
        "best, benchmarks/README.md); default: the plain formula, best near h = sigma",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the added noise")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the filter is hundreds of small element-wise ops, and on a machine whose "
        "cores are busy every op's thread barrier waits for a descheduled thread; benchmarks/README.md)",
    )
    p.add_argument("--out", required=True, help="directory for noisy.png, denoised.png, metrics.json (created)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json
    import time

    import torch

    from vitlab.classic import add_noise, nl_means, psnr, ssim
    from vitlab.errors import ConfigError

    if not 0 <= args.sigma <= 1:
        raise ConfigError(f"--sigma must be in [0, 1] (grey levels of a [0, 1] image), got {args.sigma}")
    h = args.sigma if args.h is None else args.h
    if not h > 0:
        raise ConfigError("--h must be > 0" + (f", got {h}" if args.h is not None else " (give --h when --sigma is 0)"))
    if args.patch_size < 1:
        raise ConfigError(f"--patch-size must be >= 1, got {args.patch_size}")
    if args.search < 1 or args.search % 2 == 0:
        raise ConfigError(f"--search must be an odd number >= 1, got {args.search}")
    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    out = _check_out(args.out)  # before the work: refuse early
    clean = load_image(args.image)  # (C, H, W) float32 in [0, 1]
    noisy = add_noise(clean, args.sigma, torch.Generator().manual_seed(args.seed))
    torch.set_num_threads(args.threads)  # a process setting, made by the command (the library never sets it)
    start = time.perf_counter()
    sigma = args.sigma if args.subtract_noise else None
    denoised = nl_means(noisy, h=h, patch_size=args.patch_size, search_window=args.search, sigma=sigma)
    seconds = time.perf_counter() - start
    metrics = {
        "image": args.image,
        "size": list(clean.shape),
        "sigma": args.sigma,
        "h": h,
        "patch_size": args.patch_size,
        "search_window": args.search,
        "subtract_noise": args.subtract_noise,
        "seed": args.seed,
        "threads": args.threads,
        "noisy": {"psnr": _rounded(psnr(clean, noisy)), "ssim": round(ssim(clean, noisy), 4)},
        "denoised": {"psnr": _rounded(psnr(clean, denoised)), "ssim": round(ssim(clean, denoised), 4)},
        "seconds": round(seconds, 3),
    }
    out.mkdir(parents=True, exist_ok=True)
    _save_png(noisy, out / "noisy.png")
    _save_png(denoised, out / "denoised.png")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    C, H, W = clean.shape
    print(f"{args.image}: {W}x{H}, {'grey' if C == 1 else f'{C} channels'}; noise sigma {args.sigma}, h {h:g}, "
          f"patch {args.patch_size}, search {args.search}: {seconds:.2f}s")  # fmt: skip
    for name in ("noisy", "denoised"):
        m = metrics[name]
        print(f"{name:<9} PSNR {m['psnr']:>7} dB   SSIM {m['ssim']:.4f}")
    print(f"wrote {out / 'noisy.png'}, {out / 'denoised.png'} and {out / 'metrics.json'}")
    return 0


def _rounded(db: float) -> float | str:
    return round(db, 3) if db != float("inf") else "inf"  # JSON has no infinity


def _check_out(out: str) -> Path:
    from vitlab.errors import ConfigError

    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} is a file; give a directory")
    there = [name for name in OUTPUTS if (path / name).exists() or (path / name).is_symlink()]
    if there:
        names = ", ".join(there)
        raise ConfigError(f"--out {path} already holds {names}; nothing is replaced: choose another directory")
    return path


def load_image(spec: str):
    """(C, H, W) float32 in [0, 1], C = 1 or 3: an image file, or `skimage:NAME` (scikit-image's sample images)."""
    import numpy as np
    import torch

    from vitlab.data import read_image
    from vitlab.errors import DataError

    if not spec.startswith(SKIMAGE_PREFIX):
        return read_image(spec).float() / 255.0
    from skimage import data, img_as_float

    name = spec[len(SKIMAGE_PREFIX) :]
    loader = getattr(data, name, None) if name in data.__all__ else None
    if not callable(loader) or name.startswith(("download", "data_dir")):
        raise DataError(f"{spec}: scikit-image has no sample image {name!r}; try skimage:astronaut, skimage:camera, "
                        "skimage:chelsea or skimage:coffee")  # fmt: skip
    try:
        arr = loader()
    except Exception as e:  # samples outside the wheel need a download (pooch): report it on one line
        raise DataError(f"{spec}: cannot load it offline ({type(e).__name__}: {e})") from None
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]  # drop alpha
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise DataError(f"{spec} is not a 2-D grey or RGB image (shape {arr.shape})")
    arr = img_as_float(arr).astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(arr if arr.ndim == 2 else np.moveaxis(arr, -1, 0)))
    return t[None] if t.ndim == 2 else t


def _save_png(img, path: Path) -> None:
    import torch
    from PIL import Image

    arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).numpy()  # (C, H, W)
    Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)).save(path)
