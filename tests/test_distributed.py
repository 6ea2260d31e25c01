"""torchrun + DDP on CPU (gloo): 2 ranks x batch B take the same step as 1 process x batch 2B.

Forced to the CPU: on a one-GPU machine two NCCL ranks would share a device, which NCCL refuses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import make_image_folder
from vitlab.engine import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29531",
           "-m", "vitlab", "train", "--device", "cpu", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


@pytest.mark.slow
def test_two_ranks_equal_one_process_with_double_batch(tmp_path):
    data = tmp_path / "data"
    make_image_folder(data / "train", per_class=4, size=16)  # 8 training images: one step of 8, or 2 x 4
    make_image_folder(data / "val", per_class=2, size=16)
    single = train(
        TrainConfig(model="vit_micro_patch4_16", data=str(data), epochs=1, warmup_epochs=0, no_augment=True,
                    batch_size=8, device="cpu", out=str(tmp_path / "single"))
    )  # fmt: skip
    assert single.final is not None
    r = _torchrun("--model", "vit_micro_patch4_16", "--data", str(data), "--epochs", "1", "--warmup-epochs", "0",
                  "--no-augment", "--batch-size", "4", "--out", str(tmp_path / "ddp"))  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("final test accuracy") == 1  # rank 0 reports, once
    a = load_file(tmp_path / "single" / "checkpoint.safetensors")
    b = load_file(tmp_path / "ddp" / "checkpoint.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5, msg=k)
    assert not list((tmp_path / "ddp").glob("*.tmp")) and (tmp_path / "ddp" / "report.md").is_file()


@pytest.mark.slow
def test_ddp_resume_matches_uninterrupted(tmp_path):
    data = tmp_path / "data"
    make_image_folder(data / "train", per_class=8, size=16)
    make_image_folder(data / "val", per_class=2, size=16)
    args = ["--model", "vit_micro_patch4_16", "--data", str(data), "--epochs", "3", "--batch-size", "4"]
    assert _torchrun(*args, "--out", str(tmp_path / "full")).returncode == 0
    r = _torchrun(*args, "--out", str(tmp_path / "part"), "--stop-after", "1")
    assert r.returncode == 0 and "continue with --resume" in r.stdout
    r = _torchrun("--out", str(tmp_path / "part"), "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    a = load_file(tmp_path / "full" / "checkpoint.safetensors")
    b = load_file(tmp_path / "part" / "checkpoint.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3  # one line per epoch: written by rank 0 only
