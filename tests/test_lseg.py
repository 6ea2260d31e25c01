"""Language-driven segmentation: IoU by hand, the generated masks, the dense head's shapes, train / eval / segment
through the CLI as a user types them, and a CLIP run's text tower carried over and left frozen."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.test_cli import run_cli
from vitlab.cli.main import main
from vitlab.data.captions import COLOURS, generated_captions
from vitlab.data.tokenizer import find_clip_vocab
from vitlab.engine.evaluators.segmentation import SegmentationResult, confusion, iou_from_confusion
from vitlab.factory import create_model

needs_vocab = pytest.mark.skipif(find_clip_vocab() is None, reason="CLIP's BPE vocabulary is not installed")


def test_confusion_and_iou_by_hand():
    target = torch.tensor([[0, 0, 1], [1, 2, -1]])
    pred = torch.tensor([[0, 1, 1], [1, 0, 2]])
    conf = confusion(pred, target, 4)
    # rows true, columns predicted; the -1 pixel (predicted 2) is ignored
    expected = torch.zeros(4, 4, dtype=torch.long)
    expected[0, 0], expected[0, 1], expected[1, 1], expected[2, 0] = 1, 1, 2, 1
    assert torch.equal(conf, expected)
    iou = iou_from_confusion(conf)
    # class 0: tp 1, fp 1 (the 2 taken for 0), fn 1 -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: tp 0 -> 0; 3: absent
    assert iou[:3].tolist() == pytest.approx([1 / 3, 2 / 3, 0.0]) and math.isnan(iou[3])
    r = SegmentationResult(["bg", "a", "b", "c"], ["b", "c"], iou.tolist(), 3 / 5, 1)
    m = r.metrics
    assert m["miou"] == pytest.approx(1 / 3)  # nan left out of the mean
    assert m["miou_seen"] == pytest.approx(0.5) and m["miou_held_out"] == pytest.approx(0.0)


def test_generated_masks_cover_the_shape_in_its_colour():
    data = generated_captions(12, seed=3, train=False)
    assert data.masks.shape == (12, 32, 32) and data.masks.dtype == torch.bool
    sub = data.subset([4, 7])
    assert torch.equal(sub.masks, data.masks[[4, 7]])
    for i in range(12):
        img, caption, label = data[i]
        colour = data.classes[label].split(" ")[0]
        assert colour in caption
        inside, outside = img[:, data.masks[i]].float(), img[:, ~data.masks[i]].float()
        assert inside.shape[1] > 4 and (inside == inside[:, :1]).all()  # the shape is filled with one colour
        assert (outside != inside[:, :1]).any(0).all()  # and no background pixel has it exactly
        # the fill is the named colour plus a per-image jitter of sd 12
        assert (inside[:, 0] - torch.tensor(COLOURS[colour], dtype=torch.float)).abs().max() < 48


def test_segment_gives_per_label_logits_at_input_size():
    model = create_model("lseg_vit_tiny_patch8_32").eval()
    ids = torch.randint(1, 100, (3, model.cfg.context_length))
    with torch.no_grad():
        pix = model.encode_pixels(torch.rand(2, 3, 32, 32))
        logits = model.segment(torch.rand(2, 3, 32, 32), ids)
    assert pix.shape == (2, model.cfg.embed_dim, 16, 16)
    assert torch.allclose(pix.norm(dim=1), torch.ones(2, 16, 16), atol=1e-5)
    assert logits.shape == (2, 3, 32, 32)


# ----- through the CLI --------------------------------------------------------------------------------------------

SMALL = ["train", "--task", "lseg", "--captions-train", "128", "--captions-val", "40", "--batch-size", "32"]


@pytest.fixture(scope="module")
def lseg_run(tmp_path_factory) -> Path:
    if find_clip_vocab() is None:
        pytest.skip("CLIP's BPE vocabulary is not installed")
    out = tmp_path_factory.mktemp("lseg") / "run"
    assert main([*SMALL, "--epochs", "1", "--out", str(out)]) == 0
    return out


def test_train_writes_an_lseg_report_and_eval_reads_it(lseg_run, capsys):
    report = (lseg_run / "report.md").read_text()
    assert "IoU per label" in report and (lseg_run / "iou.png").is_file()
    final = json.loads((lseg_run / "final_metrics.json").read_text())
    assert {"miou", "miou_seen", "miou_held_out", "pixel_acc"} <= set(final)
    assert len(final["per_class_iou"]) == 21 and final["classes"][0] == "background"
    assert main(["eval", "--checkpoint", str(lseg_run)]) == 0
    text = capsys.readouterr().out
    assert "40 test samples" in text and "mean IoU" in text


def test_segment_writes_pictures_and_shares(lseg_run, tmp_path, capsys):
    data = generated_captions(2, seed=5, train=False)
    paths = []
    for i, img in enumerate(data.images):
        paths.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(img.numpy().transpose(1, 2, 0)).save(paths[-1])
    out = tmp_path / "seg"
    args = ["segment", "--checkpoint", str(lseg_run), "--labels", "background,red circle,blue square"]
    assert main([*args, "--out", str(out), "--json", *paths]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in res] == paths
    for r in res:
        assert set(r["share"]) == {"background", "red circle", "blue square"}
        assert sum(r["share"].values()) == pytest.approx(1.0, abs=1e-3)
        assert Path(r["picture"]).is_file() and Path(r["picture"]).name.endswith("_seg.png")
    assert main([*args, "--out", str(out), paths[0]]) == 0  # typed twice: the pictures are rewritten
    assert capsys.readouterr().out.startswith(paths[0] + ": ")


def test_segment_bad_input_is_one_line(lseg_run, tmp_path):
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    (tmp_path / "file").write_text("")
    (tmp_path / "a").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a" / "x.png")
    ck = ["segment", "--checkpoint", str(lseg_run), "--out", str(tmp_path / "o")]
    for args, message in [
        ([*ck, "--labels", "sky", str(img)], "at least 2 labels"),
        ([*ck, "--labels", "sky,sky", str(img)], "given twice: sky"),
        ([*ck, "--labels", "a,b", str(tmp_path / "missing.png")], "missing.png"),
        ([*ck, "--labels", "a,b", str(img), str(tmp_path / "a" / "x.png")], "the same name"),
        (["segment", "--checkpoint", str(lseg_run), "--out", str(tmp_path / "file"), "--labels", "a,b", str(img)],
         "is a file"),
    ]:  # fmt: skip
        r = run_cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


@needs_vocab
def test_a_clip_run_starts_lseg_and_its_text_tower_stays_frozen(tmp_path):
    clip = tmp_path / "clip"
    args = ["--captions-train", "64", "--captions-val", "40", "--batch-size", "32", "--epochs", "1"]
    assert main(["train", "--task", "clip", *args, "--out", str(clip)]) == 0
    seg = tmp_path / "seg"
    assert main(["train", "--task", "lseg", *args, "--pretrained", str(clip), "--out", str(seg)]) == 0
    before, after = load_file(clip / "checkpoint.safetensors"), load_file(seg / "checkpoint.safetensors")
    text = [k for k in before if k.startswith("text.")]
    assert text and all(torch.equal(before[k], after[k]) for k in text)  # frozen, as LSeg freezes CLIP's
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("visual."))
    assert any(k.startswith("dense.") for k in after)


def test_lseg_task_bad_input_is_one_line(tmp_path):
    for args, message in [
        (["--data", "digits"], "--task lseg reads --data captions"),
        (["--captions-val", "1"], "--captions-val must be >= 2"),
        (["--model", "clip_vit_tiny_patch8_32"], "clip_vit_tiny_patch8_32"),
    ]:
        r = run_cli(*SMALL, "--epochs", "1", "--out", str(tmp_path / "r"), *args)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert not (tmp_path / "r").exists()
