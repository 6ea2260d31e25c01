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

import vitlab
from tests.conftest import make_image_folder
from vitlab import create_model, save_checkpoint
from vitlab.cli.main import main
from vitlab.engine import TrainConfig, train
from vitlab.engine.tasks import DistillationConfig

ROOT = Path(__file__).resolve().parents[1]


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
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
    assert r.stdout.count("final test top-1 accuracy") == 1  # rank 0 reports, once
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


def _folder(tmp_path: Path, per_class: int) -> Path:
    data = tmp_path / "data"
    make_image_folder(data / "train", per_class=per_class, size=16)
    make_image_folder(data / "val", per_class=2, size=16)
    return data


def _assert_same_weights(a_dir: Path, b_dir: Path, atol: float) -> None:
    a, b = load_file(a_dir / "checkpoint.safetensors"), load_file(b_dir / "checkpoint.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=atol, msg=k)


@pytest.mark.slow
def test_distillation_under_ddp_equals_one_process(tmp_path):
    data = _folder(tmp_path, per_class=4)
    teacher = tmp_path / "teacher.safetensors"
    torch.manual_seed(1)
    save_checkpoint(create_model("vit_micro_patch4_16", num_classes=2), teacher)
    common = dict(model="deit_micro_distilled_patch4_8", img_size=16, data=str(data), epochs=1, warmup_epochs=0,
                  no_augment=True, task="distillation",
                  task_cfg=DistillationConfig(teacher=str(teacher), distill="soft"))  # fmt: skip
    train(TrainConfig(**common, batch_size=8, device="cpu", out=str(tmp_path / "single")))
    r = _torchrun("--model", common["model"], "--img-size", "16", "--data", str(data), "--epochs", "1",
                  "--warmup-epochs", "0", "--no-augment", "--task", "distillation", "--teacher", str(teacher),
                  "--distill", "soft", "--batch-size", "4", "--out", str(tmp_path / "ddp"))  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    _assert_same_weights(tmp_path / "single", tmp_path / "ddp", atol=1e-5)  # head_dist included: it was synchronised


@pytest.mark.slow
def test_fsdp_step_equals_one_process_and_resumes(tmp_path):
    data = _folder(tmp_path, per_class=4)  # 8 images: one step of 8 in one process, or 2 x 4 sharded
    base = ["--model", "vit_micro_patch4_16", "--data", str(data), "--warmup-epochs", "0", "--no-augment"]
    train(TrainConfig(model="vit_micro_patch4_16", data=str(data), epochs=1, warmup_epochs=0, no_augment=True,
                      batch_size=8, device="cpu", out=str(tmp_path / "single")))  # fmt: skip
    r = _torchrun(*base, "--fsdp", "--epochs", "1", "--batch-size", "4", "--out", str(tmp_path / "fsdp"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (
        r.stdout.count("final test top-1 accuracy") == 1 and "FSDP: 5 sharded units over 2 ranks" in r.stdout
    )  # 4 blocks
    _assert_same_weights(tmp_path / "single", tmp_path / "fsdp", atol=1e-5)
    # the checkpoint holds full, plain tensors: it loads in one process like any other
    assert vitlab.load_checkpoint(tmp_path / "fsdp").pos_embed.shape == (1, 17, 64)

    args = [*base, "--fsdp", "--epochs", "3", "--batch-size", "2"]  # 4 optimiser steps per epoch
    assert _torchrun(*args, "--out", str(tmp_path / "full")).returncode == 0
    assert _torchrun(*args, "--out", str(tmp_path / "part"), "--stop-after", "1").returncode == 0
    r = _torchrun("--out", str(tmp_path / "part"), "--resume", "--fsdp")  # AdamW moments scattered back
    assert r.returncode == 0, r.stderr[-2000:]
    _assert_same_weights(tmp_path / "full", tmp_path / "part", atol=1e-6)
    assert len((tmp_path / "part" / "metrics.jsonl").read_text().splitlines()) == 3


def test_fsdp_outside_torchrun_is_one_clear_error(tmp_path, capsys):
    assert main(["train", "--fsdp", "--epochs", "1", "--out", str(tmp_path / "run")]) == 2
    assert "--fsdp" in capsys.readouterr().err and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_frozen_backbone_under_ddp_equals_one_process(tmp_path):
    # frozen parameters get no gradient: DDP must expect that (it used to stop at the second step)
    data = _folder(tmp_path, per_class=4)  # 8 images: each epoch one step of 8, or of 2 x 4
    base = dict(model="vit_micro_patch4_16", data=str(data), epochs=2, warmup_epochs=0, no_augment=True)
    train(TrainConfig(**base, freeze_backbone=True, batch_size=8, device="cpu", out=str(tmp_path / "single")))
    r = _torchrun("--model", base["model"], "--data", str(data), "--epochs", "2", "--warmup-epochs", "0",
                  "--no-augment", "--freeze-backbone", "--batch-size", "4", "--out", str(tmp_path / "ddp"))  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    _assert_same_weights(tmp_path / "single", tmp_path / "ddp", atol=1e-5)
