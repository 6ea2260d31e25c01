"""The MAE task through the CLI as a user types it: pre-train on digits, the report's picture, fine-tune the encoder
as a classifier with --pretrained, `vitlab explain mae-reconstruct`; the paper's learning-rate rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vitlab.cli.main import main
from vitlab.engine.config import TrainConfig
from vitlab.engine.trainer import resolve_config


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory):
    """120 of scikit-learn's digits as an image folder (12 per class): any classification data spec serves MAE."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits")
    d = load_digits()
    for k in range(10):
        (root / str(k)).mkdir()
        for j, img in enumerate(d.images[d.target == k][:12]):
            Image.fromarray((img * 255 / 16).astype(np.uint8)).save(root / str(k) / f"{j}.png")
    return str(root)


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory, digit_folder):
    out = tmp_path_factory.mktemp("mae") / "run"
    args = ["train", "--task", "mae", "--data", digit_folder, "--epochs", "3", "--batch-size", "32", "--lr", "2e-3"]
    assert main([*args, "--warmup-epochs", "0", "--out", str(out)]) == 0
    return out


def test_pretraining_writes_the_reconstruction_report(mae_run, capsys):
    rows = [json.loads(line) for line in (mae_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]  # it learns
    report = (mae_run / "report.md").read_text()
    assert "reconstruction.png" in report and (mae_run / "reconstruction.png").stat().st_size > 1000
    final = json.loads((mae_run / "final_metrics.json").read_text())
    assert final["count"] == 24 and final["loss"] == pytest.approx(rows[-1]["val_loss"])
    config = json.loads((mae_run / "config.json").read_text())
    assert config["model"] == "mae_vit_micro_patch2_8" and config["task_cfg"]["mask_ratio"] == 0.75


def test_finetune_the_encoder_as_a_classifier(mae_run, digit_folder, tmp_path, capsys):
    out = tmp_path / "ft"
    args = ["train", "--pretrained", str(mae_run), "--model", "vit_micro_patch2_8", "--data", digit_folder]
    assert main([*args, "--epochs", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out  # the CLI logs to stdout
    # the MAE run's weights less its decoder fit the encoder: only the classifier is new
    assert "checkpoint.safetensors has no classifier (head.bias, head.weight): a new head for 10 classes" in text
    assert "final test top-1 accuracy:" in text
    assert (
        main([*args[:-4], "--model", "swin_tiny_patch4_window7_224", "--epochs", "1", "--out", str(tmp_path / "x")])
        == 2
    )
    assert "use --model vit_micro_patch2_8" in capsys.readouterr().err


def test_explain_mae_reconstruct(mae_run, tmp_path, capsys):
    images = []
    for i in range(2):
        path = tmp_path / f"img{i}.png"
        Image.fromarray((np.random.default_rng(i).random((20, 24)) * 255).astype(np.uint8)).save(path)
        images.append(str(path))
    out = tmp_path / "expl"
    assert main(["explain", "mae-reconstruct", "--checkpoint", str(mae_run), *images, "--out", str(out),
                 "--mask-ratio", "0.5"]) == 0  # fmt: skip
    info = json.loads((out / "mae_reconstruct.json").read_text())
    assert [len(r["masked_patches"]) for r in info["images"]] == [8, 8] and info["num_patches"] == 16
    assert (out / "mae_reconstruct.png").stat().st_size > 1000
    assert main(["explain", "mae-reconstruct", "--model", "vit_micro_patch4_8", images[0], "--out", str(out)]) == 2
    assert "is not a masked autoencoder" in capsys.readouterr().err


def test_learning_rate_follows_the_batch_and_errors_are_clear(tmp_path, capsys):
    cfg = resolve_config(TrainConfig(task="mae", batch_size=64, out=str(tmp_path / "a")))
    assert cfg.lr == pytest.approx(1.5e-4 * 64 / 256) and cfg.weight_decay == 0.05 and cfg.clip_grad == 0.0
    assert resolve_config(TrainConfig(task="mae", lr=1e-3, out=str(tmp_path / "b"))).lr == 1e-3
    assert main(["train", "--task", "mae", "--model", "vit_micro_patch4_8", "--out", str(tmp_path / "c")]) == 2
    assert "--task mae trains a mae" in capsys.readouterr().err
    assert main(["train", "--task", "mae", "--mask-ratio", "1", "--out", str(tmp_path / "d")]) == 2
    assert "--mask-ratio must be in [0, 1)" in capsys.readouterr().err
