"""NL-means (vitlab.classic.nlmeans): hand-checked cases, the formula by explicit loops, parity with scikit-image."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vitlab.classic import add_noise, nl_means, psnr, skimage_arguments, ssim
from vitlab.classic.nlmeans import reflect_pad
from vitlab.errors import ConfigError


def loop_nl_means(z: np.ndarray, *, h: float, k: int, search: int, sigma: float = 0.0) -> np.ndarray:
    """The seed's formula pixel by pixel: z (C, H, W); patches of rows p − lo .. p + k // 2, reflection padding."""
    C, H, W = z.shape
    hi, d = k // 2, search // 2
    lo = k - 1 - hi
    zp = np.pad(z, ((0, 0), (hi + d, hi + d), (hi + d, hi + d)), mode="reflect")
    out = np.empty_like(z)
    for i in range(H):
        for j in range(W):
            pi, pj = i + hi + d, j + hi + d  # pixel (i, j) in zp
            ref = zp[:, pi - lo : pi + hi + 1, pj - lo : pj + hi + 1]
            num, den = np.zeros(C), 0.0
            for a in range(-d, d + 1):
                for b in range(-d, d + 1):
                    cand = zp[:, pi + a - lo : pi + a + hi + 1, pj + b - lo : pj + b + hi + 1]
                    f = max(((ref - cand) ** 2).mean() - 2 * sigma**2, 0.0)
                    wt = math.exp(-f / h**2)
                    num += wt * zp[:, pi + a, pj + b]
                    den += wt
            out[:, i, j] = num / den
    return out


@pytest.mark.parametrize("shape", [(9, 11), (3, 9, 11)])
@pytest.mark.parametrize(("k", "search", "sigma"), [(3, 5, 0.0), (4, 3, 0.0), (5, 7, 0.05), (1, 3, 0.0)])
def test_equals_the_formula_by_loops(shape, k, search, sigma):
    z = torch.rand(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = nl_means(z, h=0.2, patch_size=k, search_window=search, sigma=sigma or None)
    want = loop_nl_means(z.numpy().reshape(-1, *shape[-2:]), h=0.2, k=k, search=search, sigma=sigma)
    assert got.shape == z.shape and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy().reshape(want.shape), want, atol=2e-6)


def test_one_row_by_hand():
    # One row: the reflected rows above and below equal it, so each candidate comes thrice and the weights are those
    # of the 1-D filter. Patch 1 (f = squared pixel difference), window 3, h = 1, z = [0, 0, 1, 0, 0]:
    # the 1 keeps weight 1 against e^-1 for each 0 beside it; a 0 beside it has weights 1, 1 (zeros), e^-1 (the 1).
    z = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]])
    e = math.e
    want = [0.0, 1 / (2 * e + 1), e / (e + 2), 1 / (2 * e + 1), 0.0]
    np.testing.assert_allclose(nl_means(z, h=1.0, patch_size=1, search_window=3)[0].numpy(), want, rtol=1e-6)
    # Patch 3: the 1's patch (0, 1, 0) is at f = (0 + 1 + 1) / 3 from each neighbour's, (0, 0, 1) and (1, 0, 0).
    centre = nl_means(z, h=1.0, patch_size=3, search_window=3)[0, 2].item()
    assert centre == pytest.approx(1 / (1 + 2 * math.exp(-2 / 3)), rel=1e-6)


@pytest.mark.parametrize("shape", [(6, 7), (3, 6, 7), (2, 3, 6, 7)])
def test_a_constant_image_stays_constant(shape):
    z = torch.full(shape, 0.37)
    for sigma in (None, 0.1):
        got = nl_means(z, h=0.1, patch_size=3, search_window=5, sigma=sigma)
        np.testing.assert_allclose(got.numpy(), 0.37, rtol=1e-6)


def test_tiny_h_returns_the_input():
    # Random pixels: every other patch is far (f ~ 0.1), exp(-f / h^2) underflows to 0, the centre keeps weight 1.
    z = torch.rand(3, 12, 10)
    assert torch.equal(nl_means(z, h=1e-4, patch_size=3, search_window=7), z)


def test_huge_h_gives_the_window_mean():
    # h -> infinity: every weight is 1, so each pixel becomes the mean of its search window in the padded image.
    z = torch.rand(2, 9, 8, dtype=torch.float64)
    d = 2
    zp = np.pad(z.numpy(), ((0, 0), (d, d), (d, d)), mode="reflect")
    want = np.mean([zp[:, d + a : d + a + 9, d + b : d + b + 8] for a in range(-d, d + 1) for b in range(-d, d + 1)], 0)
    got = nl_means(z, h=1e6, patch_size=3, search_window=2 * d + 1)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)


def test_a_batch_equals_its_images_one_by_one():
    z = torch.rand(3, 2, 10, 9)
    got = nl_means(z, h=0.15, patch_size=3, search_window=5)
    for i in range(3):
        torch.testing.assert_close(got[i], nl_means(z[i], h=0.15, patch_size=3, search_window=5))


def test_reflect_pad_is_numpys_for_any_pad():
    x = torch.rand(2, 3, 4, 5)
    for pad in (1, 3, 4, 9):  # 4 and 9 are beyond what F.pad(mode="reflect") accepts for H = 4
        want = np.pad(x.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect")
        np.testing.assert_array_equal(reflect_pad(x, pad).numpy(), want)
    assert torch.equal(reflect_pad(torch.ones(1, 1, 1, 3), 2), torch.ones(1, 1, 5, 7))  # a side of 1 repeats


def test_add_noise_is_clipped_seeded_and_has_sigma():
    y = torch.full((1, 200, 200), 0.5)
    z = add_noise(y, 0.05, torch.Generator().manual_seed(3))
    assert torch.equal(z, add_noise(y, 0.05, torch.Generator().manual_seed(3)))
    assert (z - y).std().item() == pytest.approx(0.05, rel=0.02)  # 10 sigma from the edges: no clipping
    hard = add_noise(torch.rand(1, 50, 50), 0.5, torch.Generator().manual_seed(0))
    assert hard.min() == 0.0 and hard.max() == 1.0
    assert torch.equal(add_noise(y, 0.0), y)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"h": 0.0}, "h must be > 0"),
        ({"h": 0.1, "search_window": 4}, "search_window must be an odd integer"),
        ({"h": 0.1, "patch_size": 0}, "patch_size must be an integer >= 1"),
        ({"h": 0.1, "sigma": -0.1}, "sigma must be >= 0"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        nl_means(torch.rand(5, 5), **kwargs)
    with pytest.raises(ConfigError, match="sigma must be >= 0"):
        add_noise(torch.rand(5, 5), -1.0)
    with pytest.raises(ConfigError, match=r"got shape \(5,\)"):
        nl_means(torch.rand(5), h=0.1)


def test_metrics_are_skimages():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    y, z = torch.rand(3, 32, 32, dtype=torch.float64), torch.rand(3, 32, 32, dtype=torch.float64)
    hwc = lambda t: np.moveaxis(t.numpy(), 0, -1)  # noqa: E731
    assert psnr(y, z) == pytest.approx(peak_signal_noise_ratio(hwc(y), hwc(z), data_range=1.0))
    assert ssim(y, z) == pytest.approx(structural_similarity(hwc(y), hwc(z), data_range=1.0, channel_axis=-1))
    assert psnr(y, y) == math.inf and ssim(y[0], y[0]) == pytest.approx(1.0)


def _sample(name: str, crop: tuple[slice, slice]) -> torch.Tensor:
    from skimage import data, img_as_float

    im = img_as_float(getattr(data, name)())[crop]
    return torch.from_numpy(np.ascontiguousarray(im if im.ndim == 2 else np.moveaxis(im, -1, 0)))


@pytest.mark.parametrize(("name", "sigma_given"), [("camera", False), ("astronaut", False), ("astronaut", True)])
def test_psnr_matches_skimage_denoise_nl_means(name, sigma_given):
    from skimage.restoration import denoise_nl_means

    y = _sample(name, (slice(160, 256), slice(200, 296)))  # 96 x 96: face and edges, not only flat sky
    z = add_noise(y, 0.1, torch.Generator().manual_seed(0)).double()
    sigma = 0.1 if sigma_given else 0.0
    h = 0.08 if sigma_given else 0.1
    zn = z.numpy() if z.ndim == 2 else np.moveaxis(z.numpy(), 0, -1)
    axis = None if z.ndim == 2 else -1
    ref = denoise_nl_means(zn, patch_size=5, patch_distance=4, h=h, sigma=sigma, channel_axis=axis)
    ref = torch.from_numpy(ref if ref.ndim == 2 else np.moveaxis(ref, -1, 0))
    ours = nl_means(z, **skimage_arguments(5, 4, h), sigma=sigma or None)
    assert psnr(y, ours) > psnr(y, z) + 5  # it denoises
    assert abs(psnr(y, ours) - psnr(y, ref)) < 0.1
    with pytest.raises(ConfigError, match="compares no pixels"):
        skimage_arguments(1, 4, h)


# `vitlab denoise`


def _png(path, size=(24, 20)):
    from PIL import Image

    rng = np.random.default_rng(0)
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[:, size[0] // 2 :] = 200  # two flat halves: NL-means' easy case
    arr[..., 1] = rng.integers(0, 40, size[::-1])
    Image.fromarray(arr).save(path)
    return path


def test_denoise_writes_the_images_and_the_numbers(tmp_path, capsys):
    import json

    from PIL import Image

    from vitlab.cli.main import main

    img = _png(tmp_path / "in.png")
    out = tmp_path / "out"
    assert main(["denoise", str(img), "--sigma", "0.1", "--patch-size", "3", "--search", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["h"] == 0.1 and metrics["size"] == [3, 20, 24] and metrics["search_window"] == 5
    assert metrics["denoised"]["psnr"] > metrics["noisy"]["psnr"] + 3
    assert f"PSNR {metrics['denoised']['psnr']:>7} dB" in printed
    for name in ("noisy.png", "denoised.png"):
        with Image.open(out / name) as im:
            assert im.size == (24, 20) and im.mode == "RGB"
    # Same seed, same noise; and a second run into the same directory replaces nothing.
    assert main(["denoise", str(img), "--sigma", "0.1", "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "noisy.png").read_bytes() == (out / "noisy.png").read_bytes()
    before = (out / "metrics.json").read_bytes()
    assert main(["denoise", str(img), "--sigma", "0.2", "--out", str(out)]) == 2
    assert (out / "metrics.json").read_bytes() == before
    assert "already holds noisy.png, denoised.png, metrics.json" in capsys.readouterr().err


def test_denoise_reads_skimage_samples(tmp_path, capsys):
    import json

    from vitlab.cli.main import main

    assert main(["denoise", "skimage:camera", "--sigma", "0.1", "--search", "3", "--out", str(tmp_path / "o")]) == 0
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["size"] == [1, 512, 512] and metrics["denoised"]["psnr"] > metrics["noisy"]["psnr"] + 3
    assert "skimage:camera: 512x512, grey" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.png", "--sigma", "0.1"], "cannot read image missing.png: [Errno 2] No such file"),
        (["IMG", "--sigma", "-0.1"], "--sigma must be in [0, 1]"),
        (["IMG", "--sigma", "0"], "--h must be > 0 (give --h when --sigma is 0)"),
        (["IMG", "--sigma", "0.1", "--search", "4"], "--search must be an odd number >= 1, got 4"),
        (["IMG", "--sigma", "0.1", "--patch-size", "0"], "--patch-size must be >= 1, got 0"),
        (["skimage:nope", "--sigma", "0.1"], "scikit-image has no sample image 'nope'"),
        (["IMG", "--sigma", "0.1", "--search-window", "0"], "--search must be an odd number >= 1, got 0"),
        (["IMG", "--sigma", "0.1", "--threads", "0"], "--threads must be >= 1, got 0"),
        (["IMG", "--sigma", "0.1", "--h", "-1"], "--h must be > 0, got -1.0"),
    ],
)
def test_denoise_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, args, message):
    from vitlab.cli.main import main

    monkeypatch.chdir(tmp_path)
    args = [str(_png(tmp_path / "in.png")) if a == "IMG" else a for a in args]
    assert main(["denoise", *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vitlab denoise: error: ") and message in err
    assert not (tmp_path / "o").exists()


def test_denoise_exit_code_from_the_shell(tmp_path):
    import os
    import subprocess
    import sys

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "vitlab", "denoise", str(tmp_path / "nope.png"), "--sigma", "0.1", "--out", "o"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [f"vitlab denoise: error: cannot read image {tmp_path / 'nope.png'}: "
                                        f"[Errno 2] No such file or directory: '{tmp_path / 'nope.png'}'"]  # fmt: skip
