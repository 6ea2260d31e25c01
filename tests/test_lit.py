"""LiT with a pretrained BERT text tower through the CLI: `train --task clip --text-tower DIR|minilm --lock text`
trains the image tower and the projections only, `zeroshot` and `eval` tokenise with the tower's WordPiece."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.test_bert_text import MINILM, SMALL_VOCAB, _small_hf_dir, needs_minilm
from vitlab.cli.main import main
from vitlab.data.captions import generated_captions
from vitlab.factory import create_model
from vitlab.weights.bert import MINILM_DIR, read_bert_dir

SMALL = ["train", "--task", "clip", "--captions-train", "96", "--captions-val", "40", "--batch-size", "32"]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bert")
    _small_hf_dir(path)  # a random small BERT + its tokenizer files: runs without the shipped MiniLM
    return path


def _unchanged_encoder(state: dict, bert) -> None:
    _, ref = read_bert_dir(bert, pooler=False)
    assert ref and all(torch.equal(state[f"text.encoder.{k}"], v) for k, v in ref.items())  # locked: the file's


def test_lit_locks_the_bert_encoder_and_trains_the_rest(bert_dir, tmp_path, capsys):
    out = tmp_path / "lit"
    assert main([*SMALL, "--epochs", "1", "--text-tower", str(bert_dir), "--lock", "text", "--out", str(out)]) == 0
    state = load_file(out / "checkpoint.safetensors")
    _unchanged_encoder(state, bert_dir)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["task_cfg"]["text_tower"] == str(bert_dir)
    # the same seed rebuilds the starting point: the projection and the image tower moved away from it
    torch.manual_seed(cfg["seed"])
    start = create_model(
        "clip_vit_tiny_patch8_32", text_tower="bert", vocab_size=len(SMALL_VOCAB), text_width=32, text_depth=2,
        text_heads=4, text_mlp_dim=64, context_length=40,
    ).state_dict()  # fmt: skip
    assert not torch.equal(start["text.proj.weight"], state["text.proj.weight"])
    assert not torch.equal(start["visual.patch_embed.weight"], state["visual.patch_embed.weight"])
    assert not torch.equal(start["logit_scale"], state["logit_scale"])
    capsys.readouterr()

    assert main(["zeroshot", "--checkpoint", str(out), "--data", "captions", "--json"]) == 0  # the run's tokenizer
    d = json.loads(capsys.readouterr().out)["data"]
    assert d["count"] == 40 and d["chance"] == 0.05 and 0 <= d["held_out"] <= 1
    img = tmp_path / "x.png"
    Image.fromarray(generated_captions(1, seed=3, train=False).images[0].numpy().transpose(1, 2, 0)).save(img)
    labels = "crimson disc,azure box"  # words the captions never used: the text tower still embeds them
    args = ["zeroshot", "--checkpoint", str(out / "checkpoint.safetensors"), "--tokenizer", str(bert_dir)]
    assert main([*args, "--labels", labels, "--json", str(img)]) == 0
    top = json.loads(capsys.readouterr().out)["images"][0]["top"]
    assert (
        sorted(p["label"] for p in top) == ["azure box", "crimson disc"] and 0.99 < sum(p["prob"] for p in top) < 1.01
    )


def test_tokenizer_encode_reads_a_wordpiece_vocabulary(bert_dir, capsys):
    assert main(["tokenizer", "encode", "--tokenizer", str(bert_dir), "--json", "unbelievably quick"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["tokens"] == ["[CLS]", "un", "##believ", "##ably", "quick", "[SEP]"] and row["ids"][0] == 2


def test_missing_text_tower_files_are_one_line(bert_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))  # where `make install` would have put MiniLM
    out = tmp_path / "r"
    assert main([*SMALL, "--epochs", "1", "--text-tower", "minilm", "--lock", "text", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "venv" / "share" / "vitlab" / MINILM_DIR) in err and "make install" in err
    assert main([*SMALL, "--epochs", "1", "--text-tower", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "--text-tower" in capsys.readouterr().err and not out.exists()


@needs_minilm
def test_lit_with_minilm_through_the_cli(tmp_path, capsys):
    out = tmp_path / "lit"
    assert main([*SMALL, "--epochs", "1", "--text-tower", "minilm", "--lock", "text", "--out", str(out)]) == 0
    _unchanged_encoder(load_file(out / "checkpoint.safetensors"), MINILM)
    capsys.readouterr()
    file = str(out / "checkpoint.safetensors")  # no run config beside it: the BERT tower picks MiniLM's tokenizer
    assert main(["zeroshot", "--checkpoint", file, "--data", "captions", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)["data"]
    assert d["count"] == 800 and 0 <= d["accuracy"] <= 1
    assert main(["eval", "--checkpoint", file]) == 0
    assert "zero-shot over 20 classes" in capsys.readouterr().out
    assert np.isfinite(json.loads((out / "final_metrics.json").read_text())["zs_all"])
