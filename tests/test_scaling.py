"""Scaling measurements (attention memory, FLOPs vs resolution) and the process allocator setting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from vitlab.cli.main import main
from vitlab.scaling import attention_memory, flops_scaling, peak_allocated_mb


def test_peak_allocated_counts_live_bytes_on_cpu():
    def fn():
        a = torch.ones(2**20)  # 4 MiB, kept until the end
        b = torch.ones(2**19)  # 2 MiB, freed before c exists
        del b
        c = torch.ones(2**18)  # 1 MiB
        return a.sum() + c.sum()

    assert peak_allocated_mb(fn, torch.device("cpu")) == pytest.approx(6.0, abs=0.01)


def test_sdpa_memory_grows_linearly_and_the_explicit_softmax_quadratically():
    heads, n_small, n_big = 2, 1024, 4096  # large enough that SDPA's fixed-size work blocks are full
    small, big = attention_memory([n_small, n_big], dim=128, heads=heads)
    # the explicit path keeps (B, H, N, N) probabilities: at least one such fp32 matrix at the larger N
    assert big.naive_mb >= heads * n_big**2 * 4 / 2**20
    assert big.naive_mb / small.naive_mb > 10  # 4x the tokens, ~16x the memory
    assert big.sdpa_mb / small.sdpa_mb < 5  # ~4x: linear
    assert big.sdpa_mb < big.naive_mb / 4


def test_swin_flops_grow_with_pixels_and_vit_faster():
    small, big = flops_scaling(["swin_tiny_patch4_window7_224", "vit_small_patch16_224"], [224, 448])
    swin = big.gflops["swin_tiny_patch4_window7_224"] / small.gflops["swin_tiny_patch4_window7_224"]
    vit = big.gflops["vit_small_patch16_224"] / small.gflops["vit_small_patch16_224"]
    assert swin == pytest.approx(4.0, rel=0.02)  # windows: cost linear in the number of tokens
    assert vit > 4.5  # global attention: the N^2 term grows 16x


def test_scaling_cli_writes_tables_and_plot(tmp_path, capsys):
    out = tmp_path / "s"
    args = ["scaling", "--tokens", "64,256", "--dim", "32", "--heads", "2", "--img-sizes", "224,448", "--out", str(out)]
    assert main(args) == 0
    assert "naive / SDPA" in capsys.readouterr().out
    assert (out / "scaling.png").stat().st_size > 0 and "| 448² |" in (out / "scaling.md").read_text()


_PLOT = """
import sys, matplotlib
from pathlib import Path
from vitlab.scaling import FlopsPoint, MemoryPoint, plot_scaling
plot_scaling([MemoryPoint(64, 1.0, 2.0), MemoryPoint(256, 2.0, 9.0)], [FlopsPoint(224, {"m": 1.0})], Path(sys.argv[1]))
print("matplotlib.pyplot" in sys.modules, matplotlib.get_backend())
"""


def test_plot_leaves_matplotlib_state_alone(tmp_path):
    # a library call must not switch the user's backend or import pyplot (its global figure manager)
    png = tmp_path / "p.png"
    env = {**os.environ, "MPLBACKEND": "svg"}  # the user's choice, which matplotlib.use("Agg") would override
    out = subprocess.run([sys.executable, "-c", _PLOT, str(png)], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "svg"] and png.stat().st_size > 0


def test_scaling_cli_rejects_bad_numbers(tmp_path, capsys):
    assert main(["scaling", "--tokens", "64,x", "--out", str(tmp_path / "s")]) == 2
    assert "--tokens" in capsys.readouterr().err and not (tmp_path / "s").exists()


_FAULTS = """
import resource, sys, torch, vitlab
from vitlab.runtime import keep_freed_memory
if sys.argv[1] == "keep":
    keep_freed_memory()
m = vitlab.create_model("vit_tiny_patch16_224").eval()
x = torch.randn(4, 3, 224, 224)
with torch.inference_mode():
    m(x), m(x)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        m(x)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc setting")
def test_keep_freed_memory_stops_page_faults_between_forwards():
    def faults(malloc: str) -> int:
        return int(subprocess.run([sys.executable, "-c", _FAULTS, malloc], capture_output=True, text=True,
                                  check=True).stdout.split()[-1])  # fmt: skip

    default, kept = faults("default"), faults("keep")
    # by default every forward maps its activations afresh (~17k faults here); kept memory is reused
    assert default > 1000
    assert kept < default / 20
