"""The benchmark command: peers are the same architecture, and the table prints ratios."""

from __future__ import annotations

import pytest

import vitlab
from vitlab.bench import benchmark, hf_peer
from vitlab.cli.main import main

pytest.importorskip("transformers")


@pytest.mark.parametrize(
    "name", ["vit_micro_patch4_8", "resnet18", "swin_tiny_patch4_window7_224", "convnext_micro_32"]
)
def test_hf_peer_is_the_same_architecture(name):
    ours = vitlab.create_model(name)
    peer = hf_peer(name, ours)
    assert peer is not None
    assert sum(p.numel() for p in peer.parameters()) == sum(p.numel() for p in ours.parameters())


def test_no_hf_peer_where_hf_cannot_run_it():
    # the micro Swin's last map (2x2) is smaller than its window (4): HF's Swin fails on that
    assert hf_peer("swin_micro_patch4_window4_32", vitlab.create_model("swin_micro_patch4_window4_32")) is None


def test_benchmark_measures_every_peer():
    r = benchmark("vit_micro_patch4_8", batch_size=4, vs=("hf",), reps=2, iters=1, train=True, peak_gflops=100.0)
    assert [p.peer for p in r.peers] == ["vitlab", "hf"]
    for p in r.peers:
        assert p.img_s > 0 and p.train_img_s > 0 and p.p90_ms >= p.p50_ms > 0
        assert p.peak_mem_mb > 0  # activations of one batch, measured on the CPU too
        assert p.mfu == pytest.approx(p.gflops_s / 100.0)


def test_bench_cli_prints_ratio(capsys):
    assert main(["bench", "--models", "vit_micro_patch4_*", "--vs", "hf", "--reps", "1", "--iters", "1"]) == 0
    out = capsys.readouterr().out
    assert "GEMM peak" in out and out.count("vit_micro_patch4_") >= 2 and "MFU" in out


def test_profile_names_where_time_goes():
    r = benchmark("vit_micro_patch4_8", batch_size=4, vs=("hf",), reps=1, iters=1, peak_gflops=100.0, profile=True)
    for peer in ("vitlab", "hf"):
        ops = r.profiles[peer]
        assert 0 < len(ops) <= 8 and sum(share for _, _, share in ops) <= 1.0 + 1e-9
        linear_ops = {"aten::addmm", "mkl::_mkl_linear"}  # vitlab's Linear runs on pre-packed weights (CPU, MKL)
        assert any(name in linear_ops for name, _, _ in ops)
        assert [ms for _, ms, _ in ops] == sorted((ms for _, ms, _ in ops), reverse=True)
