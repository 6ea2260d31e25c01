"""The benchmark command: peers are the same architecture, and the table prints ratios with their spread."""

from __future__ import annotations

import pytest

import vitlab
from vitlab.bench import OPTIMIZED, Ratio, benchmark, hf_peer, speed_ratio
from vitlab.cli.main import main
from vitlab.runtime import mkl_packing_supported

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


def test_speed_ratio_is_the_median_of_per_round_ratios():
    # seconds per round: the peer took 1.1x, 0.9x, 1.2x, 1.05x, 1.0x our time (a drifting machine, both slowed alike)
    ours = [1.0, 2.0, 1.0, 2.0, 4.0]
    peer = [1.1, 1.8, 1.2, 2.1, 4.0]
    r = speed_ratio(ours, peer)
    assert (r.median, r.low, r.high) == pytest.approx((1.05, 0.9, 1.2))
    assert r.contains_one and str(r) == "1.05 [0.90-1.20]~"
    faster = speed_ratio([1.0, 1.0, 1.0, 1.0], [1.02, 1.10, 1.04, 1.06])  # even count: mean of the middle two
    assert faster == Ratio(pytest.approx(1.05), pytest.approx(1.02), pytest.approx(1.10))
    assert not faster.contains_one and str(faster) == "1.05 [1.02-1.10]"
    assert str(speed_ratio([2.0], [1.0])) == "0.50 [0.50-0.50]"  # one round: a point, slower, no ~
    with pytest.raises(ValueError, match="ours_s and peer_s"):
        speed_ratio([1.0, 1.0], [1.0])


def test_benchmark_measures_every_peer():
    r = benchmark("vit_micro_patch4_8", batch_size=4, vs=("hf",), reps=2, iters=1, train=True, peak_gflops=100.0)
    assert [p.peer for p in r.peers] == ["vitlab", OPTIMIZED, "hf"]
    for p in r.peers:
        assert p.img_s > 0 and p.p90_ms >= p.p50_ms > 0 and len(p.round_s) == 2
        assert p.peak_mem_mb > 0  # activations of one batch, measured on the CPU too
        assert p.mfu == pytest.approx(p.gflops_s / 100.0)
    assert r.peer("vitlab").train_img_s > 0 and r.peer("hf").train_img_s > 0
    assert r.peer(OPTIMIZED).train_img_s is None  # in training mode the optimized copy is the plain model
    assert r.ratio("vitlab", "hf").low <= r.ratio("vitlab", "hf").median <= r.ratio("vitlab", "hf").high
    assert r.ratio("vitlab", "hf", train=True) is not None and r.ratio(OPTIMIZED, "vitlab", train=True) is None
    plain = benchmark("vit_micro_patch4_8", batch_size=4, vs=(), reps=1, iters=1, peak_gflops=100.0, optimize=False)
    assert [p.peer for p in plain.peers] == ["vitlab"]


def test_bench_cli_prints_ratio(capsys):
    assert main(["bench", "--models", "vit_micro_patch4_*", "--vs", "hf", "--reps", "2", "--iters", "1"]) == 0
    out = capsys.readouterr().out
    assert "GEMM peak" in out and out.count("vit_micro_patch4_") >= 2 and "MFU" in out
    hf_rows = [line for line in out.splitlines() if line.split()[1:2] == ["hf"]]
    assert len(hf_rows) == 2 and all("[" in row and "-" in row.split("[")[1] for row in hf_rows)
    assert out.count(f"{OPTIMIZED}/vitlab") == 2 and "~: the interval contains 1.0" in out


def test_profile_names_where_time_goes():
    r = benchmark("vit_micro_patch4_8", batch_size=4, vs=("hf",), reps=1, iters=1, peak_gflops=100.0, profile=True)
    # the plain model and HF run nn.Linear's addmm; the optimized copy MKL's packed kernel, where the build has it
    packed = "mkl::_mkl_linear" if mkl_packing_supported() else "aten::addmm"
    for peer, linear_op in (("vitlab", "aten::addmm"), (OPTIMIZED, packed), ("hf", "aten::addmm")):
        ops = r.profiles[peer]
        assert 0 < len(ops) <= 8 and sum(share for _, _, share in ops) <= 1.0 + 1e-9
        assert any(name == linear_op for name, _, _ in ops)
        assert not any(name == "mkl::_mkl_linear" for name, _, _ in ops) or peer == OPTIMIZED
        assert [ms for _, ms, _ in ops] == sorted((ms for _, ms, _ in ops), reverse=True)
