"""The CLIP task: caption files, the generated caption set, recall@K and zero-shot by hand, train / eval / zeroshot
through the CLI as a user types them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from tests.test_cli import run_cli
from vitlab.cli.main import main
from vitlab.data.batches import collate_captions
from vitlab.data.captions import HELD_OUT, ZERO_SHOT_TEMPLATES, combo_classes, generated_captions, read_caption_file
from vitlab.data.tokenizer import find_clip_vocab
from vitlab.engine.evaluators.clip import ClipEvaluator, retrieval_recall, zero_shot_weights
from vitlab.errors import DataError

needs_vocab = pytest.mark.skipif(find_clip_vocab() is None, reason="CLIP's BPE vocabulary is not installed")


def _images(root: Path, names=("a.png", "b.png", "c.png")) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(root / name)


# ----- caption files ----------------------------------------------------------------------------------------------


def test_csv_and_jsonl_caption_files_resolve_relative_paths(tmp_path):
    _images(tmp_path / "img")
    (tmp_path / "caps.csv").write_text("Image,Caption\nimg/a.png,a dark square\nimg/b.png, two words \n")
    (tmp_path / "caps.jsonl").write_text('{"path": "img/a.png", "text": "one"}\n\n{"path": "img/c.png", "text": "x"}\n')
    csv_set = read_caption_file(tmp_path / "caps.csv")
    assert csv_set.captions == ["a dark square", "two words"] and csv_set.paths[0] == tmp_path / "img" / "a.png"
    img, caption, label = csv_set[1]
    assert img.shape == (3, 8, 8) and img.dtype == torch.uint8 and caption == "two words" and label == -1
    jl = read_caption_file(tmp_path / "caps.jsonl")
    assert jl.captions == ["one", "x"] and jl.subset([1]).captions == ["x"]


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("c.csv", "file,words\nimg/a.png,x\n", "no caption column"),
        ("c.csv", "caption,text\nx,y\n", "no image column"),
        ("c.csv", "path,caption\nimg/a.png,x\nimg/b.png,  \n", "c.csv:3: the caption of img/b.png is empty"),
        ("c.csv", "path,caption\nimg/zzz.png,x\n", "does not exist"),
        ("c.csv", "path,caption\n", "lists no images"),
        ("c.csv", "", "is empty"),
        ("c.jsonl", '{"path": "img/a.png", "caption": "x"}\n{"path": oops}\n', "c.jsonl:2: not a JSON object"),
        ("c.jsonl", "[1, 2]\n", "c.jsonl:1: expected a JSON object"),
    ],
)
def test_bad_caption_files_are_one_error_naming_file_and_line(tmp_path, name, text, message):
    _images(tmp_path / "img")
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        read_caption_file(tmp_path / name)


def test_missing_file_directory_and_binary_are_refused(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_caption_file(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="is a directory"):
        read_caption_file(tmp_path)
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(DataError, match="not UTF-8"):
        read_caption_file(tmp_path / "bin.csv")


# ----- the generated set ------------------------------------------------------------------------------------------


def test_held_out_combinations_never_reach_training_and_the_test_split_is_balanced():
    classes, held = combo_classes(), [f"{c} {s}" for c, s in HELD_OUT]
    assert len(classes) == 20 and set(held) <= set(classes)
    train = generated_captions(400, seed=0, train=True)
    assert not {classes[i] for i in train.labels} & set(held)
    assert all(not any(h in c for h in held) for c in train.captions)  # the words never come together in a caption
    test = generated_captions(200, seed=1, train=False)
    assert np.bincount(test.labels, minlength=20).tolist() == [10] * 20
    for caption, label in zip(test.captions, test.labels, strict=True):
        assert classes[label] in caption  # the label is the caption's colour + shape
    assert test.held_out == held and test.templates == ZERO_SHOT_TEMPLATES and len(ZERO_SHOT_TEMPLATES) == 8
    again = generated_captions(200, seed=1, train=False)
    assert torch.equal(again.images, test.images) and again.captions == test.captions  # deterministic


def test_the_shape_is_drawn_in_its_colour_on_the_named_side():
    data = generated_captions(40, seed=3, train=False)
    for img, caption in zip(data.images, data.captions, strict=True):
        colour = caption.split()[2]
        rgb = np.array({"red": (215, 40, 40), "green": (40, 165, 60), "blue": (45, 85, 225),
                        "yellow": (235, 205, 35), "purple": (150, 55, 190)}[colour])  # fmt: skip
        near = (np.abs(img.numpy().transpose(1, 2, 0).astype(int) - rgb).max(-1) < 45).astype(float)
        assert near.sum() > 20, caption
        ys, xs = np.nonzero(near)
        cy, cx = ys.mean() / 31, xs.mean() / 31
        side = caption.split()[-1]
        assert {"left": cx < 0.5, "right": cx > 0.5, "top": cy < 0.5, "bottom": cy > 0.5}[side], (caption, cx, cy)


# ----- recall@K and zero-shot by hand -------------------------------------------------------------------------------


def test_retrieval_recall_by_hand():
    # 3 images, 2 distinct captions: images 0 and 2 carry caption 0, image 1 caption 1
    images = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    r = retrieval_recall(images, texts, [0, 1, 0], ks=(1, 2))
    # image -> text @1: image 0 -> caption 0 (hit), image 1 -> caption 0 (miss), image 2 -> caption 1 (miss)
    assert r["i2t_r1"] == pytest.approx(1 / 3) and r["i2t_r2"] == 1.0
    # text -> image @1: caption 0 -> image 1 (scores 1, 1, 0; topk takes the first max) ...
    t2i = (texts @ images.t()).topk(1, dim=1).indices[:, 0].tolist()
    expected = np.mean([[0, 1, 0][t2i[0]] == 0, [0, 1, 0][t2i[1]] == 1])
    assert r["t2i_r1"] == pytest.approx(expected)
    # caption 1 -> image 2 (carries caption 0): a miss at 1; at 2 images 2 then 1: a hit
    assert r["t2i_r2"] == 1.0


class _Toy(torch.nn.Module):
    """encode_text: the mean of embedded tokens; encode_image: a fixed lookup by the image's first pixel."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(50000, 4)

    def encode_text(self, ids):
        m = ids.ne(0).float()[..., None]
        return F.normalize((self.emb(ids) * m).sum(1) / m.sum(1), dim=-1)

    def encode_image(self, images):
        return F.normalize(images.flatten(1)[:, :4].float(), dim=-1)


@needs_vocab
def test_zero_shot_weights_ensemble_is_the_renormalised_mean_of_normalised_prompts():
    from vitlab.data.tokenizer import ClipTokenizer

    tok, model = ClipTokenizer.from_pretrained(), _Toy()
    templates = ["a {}.", "a photo of a {}", "{} on the left"]
    w = zero_shot_weights(model, tok, ["red circle", "cat"], templates)
    for k, name in enumerate(["red circle", "cat"]):
        z = torch.stack([F.normalize(model.encode_text(tok([t.format(name)])), dim=-1)[0] for t in templates])
        assert torch.allclose(w[k], F.normalize(z.mean(0), dim=0), atol=1e-6)
    assert torch.allclose(w.norm(dim=1), torch.ones(2))


@needs_vocab
def test_evaluator_merges_duplicate_captions_and_splits_seen_from_held_out():
    from vitlab.data.tokenizer import ClipTokenizer

    tok, model = ClipTokenizer.from_pretrained(), _Toy()
    classes = ["red", "blue", "green"]
    ev = ClipEvaluator(tok, classes, held_out=["green"], templates=["{}"])
    w = zero_shot_weights(model, tok, classes, ["{}"])
    # images placed exactly on the class embeddings: zero-shot is right for 0, 1, 2; a 4th image sits on "red"
    images = torch.cat([w, w[:1]])[..., None, None].expand(4, 4, 1, 1).clone()
    captions = ["red", "blue", "green", "red"]
    samples = [(img, tok.encode(c), y) for img, c, y in zip(images, captions, [0, 1, 2, 1], strict=True)]
    ev.update(model, collate_captions(samples))
    res = ev.compute()
    assert len(ev.captions) == 3 and res.count == 4  # "red" twice, kept once
    assert res.zero_shot["seen"] == pytest.approx(2 / 3) and res.zero_shot["held_out"] == 1.0
    assert res.zero_shot["chance"] == pytest.approx(1 / 3) and res.per_class == [1.0, 0.5, 1.0]
    assert res.recall["i2t_r1"] == 1.0 and res.metrics["r_mean"] == pytest.approx(res.r_mean)


def test_collate_captions_pads_and_keeps_labels():
    a, b = torch.zeros(3, 4, 4), torch.ones(3, 4, 4)
    batch = collate_captions([(a, [5, 6, 7], 2), (b, [5], 0)])
    assert batch.input_ids.tolist() == [[5, 6, 7], [5, 0, 0]] and batch.attention_mask.tolist() == [
        [1, 1, 1],
        [1, 0, 0],
    ]
    assert batch.labels.tolist() == [2, 0]
    assert collate_captions([(a, [1]), (b, [2])]).labels is None


# ----- through the CLI --------------------------------------------------------------------------------------------

SMALL = ["train", "--task", "clip", "--captions-train", "192", "--captions-val", "40", "--batch-size", "32"]


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory) -> Path:
    if find_clip_vocab() is None:
        pytest.skip("CLIP's BPE vocabulary is not installed")
    out = tmp_path_factory.mktemp("clip") / "run"
    assert main([*SMALL, "--epochs", "2", "--out", str(out)]) == 0
    return out


def test_train_writes_a_clip_report(clip_run):
    report = (clip_run / "report.md").read_text()
    assert "clip_vit_tiny_patch8_32 on captions (clip)" in report and "Zero-shot classification" in report
    for name in ("recall.png", "zero_shot.png", "curves.png", "checkpoint.safetensors"):
        assert (clip_run / name).is_file()
    rows = [json.loads(line) for line in (clip_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and {
        "train_loss",
        "train_logit_scale",
        "val_r_mean",
        "val_zs_held_out",
    } <= set(rows[0])
    cfg = json.loads((clip_run / "config.json").read_text())
    assert cfg["lr"] == 5e-4 and cfg["weight_decay"] == 0.2  # CLIP's recipe when the flags are not given
    final = json.loads((clip_run / "final_metrics.json").read_text())
    assert 0 <= final["zs_seen"] <= 1 and len(final["per_class_zero_shot"]) == 20


def test_eval_prints_recall_and_zero_shot(clip_run, capsys):
    assert main(["eval", "--checkpoint", str(clip_run)]) == 0
    text = capsys.readouterr().out
    assert "40 test samples" in text  # the run's own --captions-val
    assert "i2t_r1" in text and "held-out" in text


def test_zeroshot_on_images_and_on_the_caption_set(clip_run, tmp_path, capsys):
    data = generated_captions(2, seed=5, train=False)
    paths = []
    for i, img in enumerate(data.images):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(img.numpy().transpose(1, 2, 0)).save(paths[-1])
    args = ["zeroshot", "--checkpoint", str(clip_run), "--labels", "red circle,blue square,green cross"]
    assert main([*args, "--json", *paths]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in out["images"]] == paths
    for r in out["images"]:
        probs = [p["prob"] for p in r["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0.99 < sum(probs) < 1.01
    assert main([*args, "--templates", "a small {} on the left", paths[0]]) == 0
    assert capsys.readouterr().out.startswith(paths[0] + ": ")
    assert main(["zeroshot", "--checkpoint", str(clip_run), "--data", "captions", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)["data"]
    assert d["count"] == 40 and d["templates"] == 8 and d["chance"] == 0.05 and 0 <= d["held_out"] <= 1


def test_zeroshot_bad_input_is_one_line(clip_run, tmp_path):
    (tmp_path / "t.txt").write_text("a photo of {}\nno slot here\n")
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    ck = ["zeroshot", "--checkpoint", str(clip_run)]
    for args, message in [
        ([*ck, "--labels", "cat", str(img)], "at least 2 labels"),
        ([*ck, "--labels", "cat,dog,cat", str(img)], "given twice: cat"),
        ([*ck, "--labels", "cat,dog", "--templates", str(tmp_path / "t.txt"), str(img)], "line 2"),
        ([*ck, "--labels", "cat,dog", "--templates", "no slot", str(img)], "is not a file, 'imagenet'"),
        ([*ck, str(img)], "give the class names"),
        ([*ck, "--labels", "a,b"], "give image files"),
        ([*ck, "--labels", "a,b", str(tmp_path / "missing.png")], "missing.png"),
    ]:
        r = run_cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


@needs_vocab
def test_siglip_and_lit_lock_train_through_the_cli(clip_run, tmp_path):
    out = tmp_path / "siglip"
    assert main([*SMALL, "--epochs", "1", "--loss", "siglip", "--out", str(out)]) == 0
    sd = load_file(out / "checkpoint.safetensors")
    assert "logit_bias" in sd and float(sd["logit_bias"]) == pytest.approx(-10, abs=0.5)  # initialised at -10
    assert json.loads((out / "config.json").read_text())["task_cfg"]["loss"] == "siglip"

    lit = tmp_path / "lit"
    assert main([*SMALL, "--epochs", "1", "--lock", "text", "--pretrained", str(clip_run), "--out", str(lit)]) == 0
    before, after = load_file(clip_run / "checkpoint.safetensors"), load_file(lit / "checkpoint.safetensors")
    text = [k for k in before if k.startswith("text.")]
    image = [k for k in before if k.startswith("visual.")]
    assert text and image
    assert all(torch.equal(before[k], after[k]) for k in text)  # the locked tower is untouched
    assert any(not torch.equal(before[k], after[k]) for k in image)  # the other one trained


def test_clip_task_bad_input_is_one_line(tmp_path):
    for args, message in [
        (["--loss", "triplet"], "--loss must be one of infonce, siglip"),
        (["--lock", "both"], "--lock must be one of none, image, text"),
        (["--data", "digits"], "--task clip reads --data captions or captions:FILE"),
        (["--data", "captions:" + str(tmp_path / "none.csv")], "none.csv does not exist"),
        (["--model", "resnet18"], "resnet18"),
    ]:
        r = run_cli(*SMALL, "--epochs", "1", "--out", str(tmp_path / "r"), *args)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert not (tmp_path / "r").exists()


@needs_vocab
def test_train_on_a_caption_file(tmp_path, capsys):
    data = generated_captions(40, seed=2, train=False)
    lines = []
    for i, (img, caption) in enumerate(zip(data.images, data.captions, strict=True)):
        Image.fromarray(img.numpy().transpose(1, 2, 0)).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "caption": caption}))
    (tmp_path / "caps.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    args = ["train", "--task", "clip", "--data", f"captions:{tmp_path / 'caps.jsonl'}", "--batch-size", "16"]
    assert main([*args, "--epochs", "1", "--out", str(out)]) == 0
    final = json.loads((out / "final_metrics.json").read_text())
    assert 0 <= final["r_mean"] <= 1 and "zs_all" not in final  # a caption file has no classes
    assert "Zero-shot" not in (out / "report.md").read_text()


def test_models_lists_clip():
    r = run_cli("models", "clip_*")
    assert r.returncode == 0, r.stderr
    assert "clip_vit_base_patch32_224" in r.stdout and "151,277,313" in r.stdout


@needs_vocab
def test_a_transformers_clip_directory_runs_zeroshot_and_eval(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    vision = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=256)  # fmt: skip
    text = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=256, vocab_size=49408,
                eos_token_id=49407)  # fmt: skip
    cfg = transformers.CLIPConfig(vision_config=vision, text_config=text, projection_dim=32)
    transformers.CLIPModel(cfg).save_pretrained(tmp_path / "hf")
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(img)
    assert main(["zeroshot", "--checkpoint", str(tmp_path / "hf"), "--labels", "cat,dog", "--json", str(img)]) == 0
    (result,) = json.loads(capsys.readouterr().out)["images"]
    assert {p["label"] for p in result["top"]} == {"cat", "dog"}
    assert main(["eval", "--checkpoint", str(tmp_path / "hf"), "--data", "captions"]) == 0  # the task from the model
    assert "task clip" in capsys.readouterr().out


# ----- few-shot linear probes ---------------------------------------------------------------------------------------


def test_few_shot_probe_on_separable_features_and_its_checks():
    from vitlab.engine.evaluators.fewshot import few_shot_probe, parse_shots

    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3, 8) * 5
    pool_y, test_y = torch.arange(3).repeat(10), torch.arange(3).repeat(7)
    pool_x = centres[pool_y] + 0.3 * torch.randn(30, 8, generator=g)
    test_x = centres[test_y] + 0.3 * torch.randn(21, 8, generator=g)
    r = few_shot_probe(pool_x, pool_y, test_x, test_y, [1, 2, 4], repeats=2)
    assert r.shots == [1, 2, 4] and r.mean == [1.0, 1.0, 1.0] and r.std == [0.0, 0.0, 0.0] and len(r.C) == 3
    noise = few_shot_probe(torch.randn(30, 8, generator=g), pool_y, torch.randn(21, 8, generator=g), test_y, [4])
    assert noise.mean[0] < 0.75  # no signal: no better than a lucky guess
    with pytest.raises(ValueError, match="11 shots per class"):
        few_shot_probe(pool_x, pool_y, test_x, test_y, [11])
    assert parse_shots("16, 1,4,4") == [1, 4, 16]
    for bad in ("0,2", "a", ""):
        with pytest.raises(Exception, match="--few-shot"):
            parse_shots(bad)


def test_zeroshot_few_shot_curve_through_the_cli(clip_run, tmp_path, capsys):
    plot = tmp_path / "fs.png"
    args = ["zeroshot", "--checkpoint", str(clip_run), "--data", "captions", "--few-shot", "1,2", "--repeats", "2"]
    assert main([*args, "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    assert "linear probe on frozen image features" in text and "2 shot(s) per class" in text
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([*args, "--json"]) == 0
    fs = json.loads(capsys.readouterr().out)["data"]["few_shot"]
    assert fs["shots"] == [1, 2] and all(0 <= a <= 1 for a in fs["accuracy"]) and fs["repeats"] == 2
    for extra, message in [
        (["--plot", str(tmp_path / "x.png")], "--few-shot and --plot score a labelled data set"),
        (["--data", "captions", "--plot", str(tmp_path / "x.png")], "--plot draws the --few-shot curve"),
        (["--data", "captions", "--few-shot", "2", "--plot", str(tmp_path / "x.jpg")], "name it *.png"),
        (["--data", "captions", "--few-shot", "0"], "shot counts must be >= 1"),
    ]:
        r = run_cli("zeroshot", "--checkpoint", str(clip_run), *extra)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (extra, r.stderr)
