"""Non-local means denoising, vectorised in torch: every pixel becomes a weighted mean of the pixels of its search
window, weighted by how alike the patches around them are.

Buades, Coll & Morel, "A non-local algorithm for image denoising", CVPR 2005 (seed 000 of the lectures):

    ŷ(x₁) = Σ_x₂ w(x₁, x₂) z(x₂) / Σ_x₂ w(x₁, x₂),   w(x₁, x₂) = exp(−f(x₁, x₂) / h²),

with f the squared distance between the k×k patches centred on x₁ and x₂, averaged over the patch (a box kernel)
and over the colour channels, x₂ ranging over a search window centred on x₁, and z = clip(y + η, 0, 1) the
observation of the clean image y under additive white Gaussian noise η ~ N(0, σ²) (`add_noise`).

How it relates to `skimage.restoration.denoise_nl_means` (scikit-image 0.26, its default `fast_mode=True`, read
from its Cython source and reproduced to 1e-15 by a loop over pixels): for each pixel it sums the squared
differences over the channels and over a (s − 1) × (s − 1) box, rows p − s//2 + 1 .. p + s//2 (one pixel fewer than
its `patch_size` s, and not centred), and divides by C·s²·h², not by the number of pixels summed. Here the patch is
centred for odd k and f is a mean. The two coincide for `patch_size=s − 1` (an even k is allowed here and anchored as
scikit-image's box) and `h = h_skimage · s / (s − 1)`: `skimage_arguments` gives these, and at them the PSNRs agree
within 0.1 dB (tests/test_nlmeans.py, benchmarks/nlmeans.py). What still differs: scikit-image drops weights below
e⁻⁵ and uses Schraudolph's approximation of exp; this file keeps every weight of the window and the exact exp, the
seed's formula. The same in both: reflection padding without repeating the edge (`np.pad(mode="reflect")`), the
search window of a border pixel reaching into that padding, the centre weight 1, and `sigma`: f ← max(f − 2σ², 0),
the expected distance between two noisy copies of one patch taken off (Buades et al., IPOL 2011), used only when
sigma is given (the default here is the seed's plain f). scikit-image's `fast_mode=False` uses a Gaussian-weighted
patch and clips the search window at the border; it is not reproduced.

The computation loops over half the search-window offsets t only: f(p, p − t) = f(q, q + t) at q = p − t makes the
weight map of −t the weight map of t shifted by t, so one map of distances, computed on the image grown by the window
radius, serves both (scikit-image's fast mode uses the same symmetry). Each map is a subtraction and a square per
channel and a separable box sum by shifted additions, over the whole (B, H, W) plane; nothing loops over pixels.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from vitlab.errors import ConfigError, shape_text


def add_noise(img: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = clip(y + η, 0, 1), η ~ N(0, σ²) i.i.d. per pixel and channel (AWGN); float32, of `img`'s shape."""
    if not sigma >= 0:
        raise ConfigError(f"sigma must be >= 0, got {sigma}")
    y = img.float()
    noise = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
    return (y + sigma * noise).clamp_(0.0, 1.0)


def nl_means(
    img: torch.Tensor,
    *,
    h: float,
    patch_size: int = 5,
    search_window: int = 11,
    sigma: float | None = None,
) -> torch.Tensor:
    """Non-local means of `img` in [0, 1]: (H, W) grey, (C, H, W) or (B, C, H, W); returns the same shape, float32.

    h: the filtering parameter of w = exp(−f/h²), in grey levels of [0, 1]; the lecture's rule of thumb is h ≈ σ.
    patch_size: side k of the patches compared; f is their mean squared difference over k² pixels and C channels.
        Odd k centres the patch on the pixel; even k (for `skimage_arguments`) spans p − k/2 + 1 .. p + k/2.
    search_window: side (odd) of the square of candidate pixels x₂ around each x₁ (scikit-image's
        `patch_distance` is its radius, (search_window − 1) // 2).
    sigma: when given, f ← max(f − 2σ², 0) as scikit-image does with its `sigma` (the noise's expected contribution
        taken off); None or 0 keeps the seed's plain exp(−f/h²).

    Runs on img's device, on torch's current number of threads: the work is ~20 whole-image element-wise ops per
    offset, and on a CPU whose other cores are busy one thread is fastest by far (benchmarks/README.md).
    """
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ConfigError(f"patch_size must be an integer >= 1, got {patch_size!r}")
    if not isinstance(search_window, int) or search_window < 1 or search_window % 2 == 0:
        raise ConfigError(f"search_window must be an odd integer >= 1, got {search_window!r}")
    if not h > 0:
        raise ConfigError(f"h must be > 0, got {h}")
    if sigma is not None and not sigma >= 0:
        raise ConfigError(f"sigma must be >= 0, got {sigma}")
    if img.ndim not in (2, 3, 4) or 0 in img.shape:
        raise ConfigError(f"nl_means expects an image (H, W), (C, H, W) or (B, C, H, W); got shape {shape_text(img)}")
    x = img.float().reshape(_as_4d(img.shape))  # (B, C, H, W)
    out = _nl_means_4d(x, h=float(h), k=patch_size, d=search_window // 2, var2=2.0 * float(sigma or 0.0) ** 2)
    return out.reshape(img.shape)


def skimage_arguments(patch_size: int, patch_distance: int, h: float) -> dict:
    """The `nl_means` keyword arguments that compute the weights `skimage.restoration.denoise_nl_means(image,
    patch_size, patch_distance, h, fast_mode=True)` computes (module docstring): its box is one pixel smaller than its
    patch_size, and it divides by s² instead of the box's (s − 1)² pixels. `sigma` carries over unchanged."""
    s = patch_size + 1 if patch_size % 2 == 0 else patch_size  # scikit-image makes an even size odd
    if s < 3:
        raise ConfigError(f"skimage patch_size {patch_size} compares no pixels (its box is s - 1 = {s - 1} wide)")
    return {"patch_size": s - 1, "search_window": 2 * patch_distance + 1, "h": h * s / (s - 1)}


def _as_4d(shape: torch.Size) -> tuple[int, int, int, int]:
    if len(shape) == 2:
        return (1, 1, *shape)
    if len(shape) == 3:
        return (1, *shape)
    return tuple(shape)


def reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """(..., H, W) padded by `pad` on each side of the last two dims by reflection without repeating the edge
    (`np.pad(mode="reflect")`), for any pad: unlike `F.pad(mode="reflect")` it also pads a side shorter than `pad`."""
    for dim in (-2, -1):
        n = x.shape[dim]
        idx = torch.arange(-pad, n + pad, device=x.device)
        if n == 1:
            idx = torch.zeros_like(idx)
        else:
            period = 2 * (n - 1)
            idx = idx % period
            idx = torch.where(idx >= n, period - idx, idx)
        x = x.index_select(dim, idx)
    return x


def _window_sum(x: torch.Tensor, k: int, dim: int, out: torch.Tensor) -> torch.Tensor:
    """Sums of k consecutive entries of x along `dim` (length n -> n − k + 1), written to `out`, by doubling: the
    sums of 2, 4, 8, ... entries, combined by the binary digits of k, take ⌊log2 k⌋ + popcount(k) − 1 additions
    (4 for k = 7) instead of k − 1; on a CPU much faster than `F.avg_pool2d`, whose kernel loops over k² taps."""
    n = x.shape[dim] - k + 1
    pieces, start, span, width = [], 0, x, 1  # span[i] = x[i] + ... + x[i + width − 1]
    while True:
        if k & width:
            pieces.append(span.narrow(dim, start, n))
            start += width
        if 2 * width > k:
            break
        m = span.shape[dim] - width
        span = span.narrow(dim, 0, m) + span.narrow(dim, width, m)
        width *= 2
    if len(pieces) == 1:
        return out.copy_(pieces[0])
    torch.add(pieces[0], pieces[1], out=out)
    for piece in pieces[2:]:
        out += piece
    return out


def _nl_means_4d(x: torch.Tensor, *, h: float, k: int, d: int, var2: float) -> torch.Tensor:
    """x (B, C, H, W) float32 -> denoised (B, C, H, W). k: patch side; d: search radius; var2: 2σ² (0: none)."""
    B, C, H, W = x.shape
    hi = k // 2  # the patch of p spans rows (and columns) p − lo .. p + hi: centred for odd k
    lo = k - 1 - hi
    xp = reflect_pad(x, hi + 2 * d)  # (B, C, H + 2hi + 4d, W + 2hi + 4d)
    # Distances are computed on the image grown by d on each side, grid E of He × We pixels: the weight of −t at p is
    # the weight of t at p − t, which may lie up to d outside the image. The patches of E cover Le × Me pixels of xp.
    He, We = H + 2 * d, W + 2 * d
    Le, Me = He + k - 1, We + k - 1
    s0 = d + hi - lo  # where the patch of E's first pixel starts in xp
    ref = xp[:, :, s0 : s0 + Le, s0 : s0 + Me]  # (B, C, Le, Me)
    centre = hi + 2 * d  # where image pixel (0, 0) sits in xp
    scale = 1.0 / (k * k * C * h * h)

    acc = x.clone()  # the zero shift: w = exp(0) = 1 for every pixel (with sigma too: max(−2σ², 0) = 0)
    wsum = torch.ones(B, 1, H, W, dtype=x.dtype, device=x.device)
    sq = torch.empty(B, Le, Me, dtype=x.dtype, device=x.device)
    diff = torch.empty_like(sq)
    tmp = torch.empty(B, He, Me, dtype=x.dtype, device=x.device)
    w = torch.empty(B, He, We, dtype=x.dtype, device=x.device)
    for u, v in _half_offsets(d):
        shifted = xp[:, :, s0 + u : s0 + u + Le, s0 + v : s0 + v + Me]
        torch.sub(shifted[:, 0], ref[:, 0], out=sq).square_()
        for c in range(1, C):  # channel by channel: no (B, C, Le, Me) temporary
            sq.addcmul_(torch.sub(shifted[:, c], ref[:, c], out=diff), diff)
        _window_sum(_window_sum(sq, k, 1, out=tmp), k, 2, out=w)  # (B, He, We): k²·C·f(p, p + t) over E
        if var2:
            w.mul_(-scale).add_(var2 / (h * h)).clamp_(max=0.0).exp_()  # exp(−max(f − 2σ², 0) / h²)
        else:
            w.mul_(-scale).exp_()  # exp(−f / h²)
        w1 = w[:, None, d : d + H, d : d + W]  # (B, 1, H, W): w(p, p + t)
        w2 = w[:, None, d - u : d - u + H, d - v : d - v + W]  # w(p, p − t) = w(p − t, p)
        acc.addcmul_(w1, xp[:, :, centre + u : centre + u + H, centre + v : centre + v + W])
        acc.addcmul_(w2, xp[:, :, centre - u : centre - u + H, centre - v : centre - v + W])
        wsum += w1
        wsum += w2
    return acc.div_(wsum)


def _half_offsets(d: int) -> list[tuple[int, int]]:
    """The offsets (u, v) of the (2d + 1)² window with (u, v) > (0, 0) lexicographically: one of each pair ±t."""
    return [(u, v) for u in range(0, d + 1) for v in range(-d, d + 1) if u > 0 or v > 0]


def _to_hwc(img: torch.Tensor) -> np.ndarray:
    """(H, W) or (C, H, W) tensor -> float64 numpy (H, W) or (H, W, C), as scikit-image's metrics read images."""
    arr = img.detach().cpu().double().numpy()
    if arr.ndim == 3:
        arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    return arr


def psnr(clean: torch.Tensor, test: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of `test` against `clean`, both in [0, 1] (skimage.metrics)."""
    from skimage.metrics import peak_signal_noise_ratio

    a, b = _to_hwc(clean), _to_hwc(test)
    if np.array_equal(a, b):
        return math.inf  # skimage also returns inf, after a divide-by-zero warning
    return float(peak_signal_noise_ratio(a, b, data_range=1.0))


def ssim(clean: torch.Tensor, test: torch.Tensor) -> float:
    """Structural similarity of `test` against `clean`, both in [0, 1], (H, W) or (C, H, W) (skimage.metrics, its
    default 7×7 uniform window; colour channels averaged)."""
    from skimage.metrics import structural_similarity

    a, b = _to_hwc(clean), _to_hwc(test)
    return float(structural_similarity(a, b, data_range=1.0, channel_axis=-1 if a.ndim == 3 else None))
