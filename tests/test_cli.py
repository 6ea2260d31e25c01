"""The CLI as a user runs it: sub-commands, and one clear line (no traceback) for bad input."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitlab.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "vitlab", *args], capture_output=True, text=True, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--epochs", "3", "--batch-size", "128", "--out", str(out)]) == 0
    return out


def test_train_prints_accuracy(trained_run, capsys):
    out = trained_run.parent / "again"
    assert main(["train", "--epochs", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "final test top-1 accuracy:" in text and "report.md" in text


def test_models_table(capsys):
    assert main(["models", "vit_base_patch16_224"]) == 0
    text = capsys.readouterr().out
    assert "86,567,656" in text and "35.128" in text and "17.564" in text
    assert main(["models", "nothing_like_this*"]) == 1


def test_eval_prints_top1_top5_per_class(trained_run, capsys):
    assert main(["eval", "--checkpoint", str(trained_run)]) == 0
    text = capsys.readouterr().out
    assert "top-1" in text and "top-5" in text and "per-class accuracy" in text
    assert text.count("\n  ") >= 10  # one line per digit


def test_eval_transformers_directory_without_model(tmp_path, capsys):
    """`--checkpoint HF_DIR`: config.json names the architecture (a 1-channel 8x8 ViT: vit_micro_patch4_8)."""
    transformers = pytest.importorskip("transformers")
    from tests.conftest import make_image_folder

    cfg = transformers.ViTConfig(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128, image_size=8, patch_size=4,
        num_channels=1, num_labels=2,
    )  # fmt: skip
    transformers.ViTForImageClassification(cfg).save_pretrained(tmp_path / "hf")
    data = make_image_folder(tmp_path / "imgs", per_class=5)
    assert main(["eval", "--checkpoint", str(tmp_path / "hf"), "--data", str(data)]) == 0
    text = capsys.readouterr().out
    assert "top-1" in text and "per-class accuracy" in text and "cat" in text


def test_predict_top5(trained_run, tmp_path, capsys):
    from sklearn.datasets import load_digits

    img = (load_digits().images[0] * 255 / 16).astype(np.uint8)
    Image.fromarray(img).resize((32, 32)).convert("RGB").save(tmp_path / "zero.png")
    assert main(["predict", str(tmp_path / "zero.png"), "--checkpoint", str(trained_run)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].endswith("zero.png") and len(lines) == 6


def test_predict_optimized_and_plain_agree(trained_run, tmp_path, capsys):
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    outputs = []
    for flag in ("--optimize", "--no-optimize"):
        assert main(["predict", str(tmp_path / "red.png"), "--checkpoint", str(trained_run), flag]) == 0
        rows = [line.split() for line in capsys.readouterr().out.strip().splitlines()[1:]]
        outputs.append(rows)
    assert [r[0] for r in outputs[0]] == [r[0] for r in outputs[1]]  # same labels in the same order
    assert [float(r[1]) for r in outputs[0]] == pytest.approx([float(r[1]) for r in outputs[1]], abs=2e-4)


def test_unknown_model_exits_with_suggestion():
    r = run_cli("train", "--model", "vit_tiny_patch16_22", "--out", "/tmp/never")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "unknown model 'vit_tiny_patch16_22'; did you mean vit_tiny_patch16_224" in r.stderr
    assert not Path("/tmp/never").exists()


def test_bad_data_errors_name_the_path(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["train", "--data", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert str(missing) in capsys.readouterr().err
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a" / "ok.png")
    (tmp_path / "imgs" / "b").mkdir()
    (tmp_path / "imgs" / "b" / "bad.jpg").write_bytes(b"\xff\xd8 nope")
    assert main(["train", "--data", str(tmp_path / "imgs"), "--out", str(tmp_path / "o")]) == 2
    assert "bad.jpg" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_checkpoint_errors(trained_run, tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump(Evil(), f)
    assert main(["eval", "--checkpoint", str(tmp_path / "evil.pth"), "--model", "vit_micro_patch4_8"]) == 2
    assert "refusing to load" in capsys.readouterr().err
    # weights of another architecture (plain state dict, no config to adopt): keys listed
    from safetensors.torch import load_file, save_file

    save_file(load_file(trained_run / "checkpoint.safetensors"), tmp_path / "plain.safetensors")
    assert main(["eval", "--checkpoint", str(tmp_path / "plain.safetensors"), "--model", "vit_micro_patch2_8"]) == 2
    assert "shape mismatch" in capsys.readouterr().err
    # wrong number of classes for the data
    assert main(["eval", "--checkpoint", str(trained_run), "--data", str(tmp_path / "absent")]) == 2


def test_existing_run_untouched_by_failed_train(trained_run, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in trained_run.iterdir()}
    assert main(["train", "--out", str(trained_run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--out", str(trained_run), "--resume", "--device", "cuda:9"]) == 2
    assert {p.name: p.stat().st_mtime_ns for p in trained_run.iterdir()} == before


@pytest.mark.parametrize("device", ["cuda:9", "tpu", "gpu"])
def test_bad_device_is_one_line(device, tmp_path, capsys):
    assert main(["train", "--device", device, "--out", str(tmp_path / "o")]) == 2
    assert "--device" in capsys.readouterr().err and not (tmp_path / "o").exists()
