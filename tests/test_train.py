"""The training engine end to end on the embedded digits (short runs)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from vitlab import load_checkpoint
from vitlab.engine import TrainConfig, train
from vitlab.engine.tasks import ClassificationConfig, DistillationConfig
from vitlab.errors import ConfigError

FAST = dict(epochs=2, batch_size=128, warmup_epochs=0.5)


def test_run_directory_contents(tmp_path):
    r = train(TrainConfig(out=str(tmp_path / "run"), **FAST))
    out = r.out
    for name in ("config.json", "metrics.jsonl", "checkpoint.safetensors", "train_state.safetensors", "state.json",
                 "report.md", "curves.png", "confusion.png", "final_metrics.json"):  # fmt: skip
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert r.final.top1 == rows[-1]["val_acc"] and 0.1 < r.final.top1 <= 1.0
    assert sum(map(sum, r.final.confusion)) == 360
    assert json.loads((out / "state.json").read_text())["epoch"] == 2
    report = (out / "report.md").read_text()
    assert "top-1 accuracy" in report and "confusion.png" in report and "| 9 |" in report
    assert not list(out.glob("*.tmp"))  # atomic writes leave no temporaries
    # the data set's class names are part of the model's config, saved with it
    assert load_checkpoint(out).cfg.labels == tuple(str(i) for i in range(10))


def test_resume_matches_uninterrupted(tmp_path):
    cfg = dict(epochs=3, batch_size=128, warmup_epochs=1, ema=True, task_cfg=ClassificationConfig(mixup=0.4))
    full = train(TrainConfig(out=str(tmp_path / "a"), **cfg))
    part = train(TrainConfig(out=str(tmp_path / "b"), stop_after=1, **cfg))
    assert part.final is None and len(part.metrics) == 1
    resumed = train(TrainConfig(out=str(tmp_path / "b"), resume=True))
    keys = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_acc_ema", "lr")
    assert [{k: m[k] for k in keys} for m in resumed.metrics] == [{k: m[k] for k in keys} for m in full.metrics]
    a, b = load_file(tmp_path / "a" / "checkpoint.safetensors"), load_file(tmp_path / "b" / "checkpoint.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_existing_run_is_not_overwritten(tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(out=str(out), **{**FAST, "epochs": 1}))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ConfigError, match="already holds a run"):
        train(TrainConfig(out=str(out), **FAST))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_flags_smoke(tmp_path):
    r = train(
        TrainConfig(
            out=str(tmp_path / "r"), epochs=1, batch_size=64, accum_steps=2, bf16=True, ema=True,
            task_cfg=ClassificationConfig(cutmix=1.0, mixup=0.8),
            clip_grad=0.5, drop_path=0.2, img_size=16, grad_checkpointing=True,
        )
    )  # fmt: skip
    assert torch.isfinite(torch.tensor(r.metrics[-1]["train_loss"])) and "val_acc_ema" in r.metrics[-1]


def test_distillation_and_transfer(tmp_path):
    teacher = train(TrainConfig(out=str(tmp_path / "teacher"), **FAST))
    for kind in ("hard", "soft"):
        s = train(
            TrainConfig(
                model="deit_micro_distilled_patch4_8", out=str(tmp_path / kind), task="distillation",
                task_cfg=DistillationConfig(teacher=str(teacher.out), distill=kind), **FAST,
            )
        )  # fmt: skip
        assert s.final.top1 > 0.1

    # transfer learning: frozen backbone keeps its weights, the head learns; then unfreezing trains everything
    frozen = train(TrainConfig(out=str(tmp_path / "ft"), pretrained=str(teacher.out), freeze_backbone=True, **FAST))
    t, f = load_file(teacher.out / "checkpoint.safetensors"), load_file(frozen.out / "checkpoint.safetensors")
    assert all(torch.equal(t[k], f[k]) for k in t if not k.startswith("head."))
    assert not torch.equal(t["head.weight"], f["head.weight"])
    unfrozen = train(
        TrainConfig(
            out=str(tmp_path / "ft2"), pretrained=str(teacher.out), freeze_backbone=True, unfreeze_epoch=2, **FAST
        )
    )
    u = load_file(unfrozen.out / "checkpoint.safetensors")
    assert not torch.equal(t["blocks.0.attn.qkv.weight"], u["blocks.0.attn.qkv.weight"])


def test_bad_config_values(tmp_path):
    with pytest.raises(ConfigError, match="--epochs must be >= 1"):
        train(TrainConfig(out=str(tmp_path / "x"), epochs=0))
    with pytest.raises(ConfigError, match="--unfreeze-epoch needs --freeze-backbone"):
        train(TrainConfig(out=str(tmp_path / "x"), unfreeze_epoch=3))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "name,img_size",
    [
        ("lenet5", 32),
        ("resnet18", 32),
        ("convnext_micro_32", 32),
        ("alexnet", 64),
        ("swin_micro_patch4_window4_32", 32),
    ],
)
def test_cnn_families_train_on_digits(tmp_path, name, img_size):
    r = train(TrainConfig(model=name, img_size=img_size, out=str(tmp_path / name), epochs=1, batch_size=128))
    assert r.final is not None and torch.isfinite(torch.tensor(r.metrics[-1]["train_loss"]))
