"""Penultimate features (t-SNE, faiss retrieval) and open-set recognition: scores and metrics by hand, retrieval
against brute force, classes held out of training, and `vitlab explain tsne | neighbours | open-set` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import vitlab
from vitlab.cli.main import main
from vitlab.data import ArrayDataset, DataSplits, ImageFolder, hold_out_classes, load_data, resolve_classes
from vitlab.errors import DataError
from vitlab.explain.features import FeatureIndex, extract_features, penultimate_features, tsne_embedding
from vitlab.explain.openset import auroc, fpr_at_tpr, open_set_scores, tpr_threshold

# ----- open-set scores and metrics ----------------------------------------------------------------------------------


def test_open_set_scores_by_hand():
    s = open_set_scores(torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]))
    z = math.e + math.e**2 + math.e**3
    torch.testing.assert_close(s["max_logit"], torch.tensor([3.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(s["max_softmax"], torch.tensor([math.e**3 / z, 1 / 3], dtype=torch.float64))
    torch.testing.assert_close(s["energy"], torch.tensor([math.log(z), math.log(3)], dtype=torch.float64))


def test_fpr_at_95_by_hand():
    known = torch.arange(1.0, 21.0)  # 1..20: a threshold of 2 keeps 19 of 20 = 95%, a threshold of 3 only 90%
    unknown = torch.tensor([0.0, 1.5, 2.0, 3.0])  # 2.0 and 3.0 reach the threshold (>=): half are accepted
    assert tpr_threshold(known) == 2.0
    assert fpr_at_tpr(known, unknown) == 0.5
    assert fpr_at_tpr(known, unknown, tpr=1.0) == 0.75  # threshold 1: all but 0.0
    assert fpr_at_tpr(known, torch.tensor([-1.0])) == 0.0
    assert fpr_at_tpr(torch.tensor([5.0]), torch.tensor([5.0, 4.0])) == 0.5  # one known: its own score


def test_fpr_at_95_is_roc_curves_fpr_at_the_first_tpr_reaching_95():
    from sklearn.metrics import roc_curve

    g = torch.Generator().manual_seed(0)
    for n_known, n_unknown in [(100, 40), (37, 13), (20, 20)]:
        known = torch.randn(n_known, generator=g) + 1
        unknown = torch.round(torch.randn(n_unknown, generator=g) * 4) / 4  # ties with each other
        y = np.r_[np.ones(n_known), np.zeros(n_unknown)]
        fpr, tpr, _ = roc_curve(y, torch.cat([known, unknown]).numpy(), drop_intermediate=False)
        assert fpr_at_tpr(known, unknown) == pytest.approx(fpr[np.argmax(tpr >= 0.95 - 1e-12)])


def test_auroc_by_hand_counts_ties_half():
    # pairs (known, unknown): (2,1) 1, (2,2) 0.5, (3,1) 1, (3,2) 1 -> 3.5 / 4
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([1.0, 2.0])) == 0.875
    assert auroc(torch.tensor([1.0]), torch.tensor([2.0])) == 0.0
    with pytest.raises(ValueError, match="need known and unknown"):
        auroc(torch.tensor([1.0]), torch.tensor([]))
    with pytest.raises(ValueError, match="NaN"):
        fpr_at_tpr(torch.tensor([math.nan]), torch.tensor([1.0]))


# ----- features and retrieval ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vit_micro_patch4_8", "resnet18"])
def test_penultimate_features_feed_the_classifier(name):
    model = vitlab.create_model(name, num_classes=5, in_chans=1, img_size=8 if name.startswith("vit") else 32).eval()
    x = torch.randn(3, 1, *model.pretrained_cfg["input_size"][1:])
    feats, logits = penultimate_features(model, x)
    assert feats.shape == (3, model.num_features)
    torch.testing.assert_close(logits, model(x))
    torch.testing.assert_close(model.get_classifier()(feats), logits)  # the features are the head's input
    headless = vitlab.create_model(name, num_classes=0, in_chans=1, img_size=x.shape[-1]).eval()
    assert penultimate_features(headless, x)[1] is None


def test_extract_features_keeps_the_data_order():
    model = vitlab.create_model("vit_micro_patch4_8", num_classes=3, in_chans=1).eval()
    xs = torch.randn(5, 1, 8, 8)
    ds = list(zip(xs, [2, 0, 1, 1, 0], strict=True))
    f = extract_features(model, ds, batch_size=2)
    assert f.labels.tolist() == [2, 0, 1, 1, 0]
    torch.testing.assert_close(f.features, penultimate_features(model, xs)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f.logits, model(xs), atol=1e-5, rtol=1e-5)


def test_feature_index_equals_brute_force_cosine():
    g = torch.Generator().manual_seed(0)
    base, queries = torch.randn(50, 16, generator=g) * 3, torch.randn(4, 16, generator=g)
    scores, idx = FeatureIndex(base).search(queries, 5)
    cos = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(base, dim=1).T  # (4, 50)
    top = cos.topk(5, dim=1)
    assert idx.tolist() == top.indices.tolist()
    torch.testing.assert_close(scores, top.values, atol=1e-5, rtol=1e-5)
    assert FeatureIndex(base).search(base[7:8] * 2, 1)[1].item() == 7  # cosine ignores length
    with pytest.raises(ValueError, match=r"k must be in \[1, 50\]"):
        FeatureIndex(base).search(queries, 51)


def test_tsne_separates_two_far_clusters():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(15, 8, generator=g), torch.randn(15, 8, generator=g) + 20])
    xy = tsne_embedding(x, perplexity=5)
    assert xy.shape == (30, 2)
    a, b = xy[:15], xy[15:]
    gap = np.linalg.norm(a.mean(0) - b.mean(0))
    assert gap > 3 * max(a.std(0).max(), b.std(0).max())


# ----- classes held out of training ---------------------------------------------------------------------------------


def test_hold_out_classes_relabels_in_order(tmp_path):
    images = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1)
    train = ArrayDataset(images, torch.tensor([0, 1, 2, 3, 2, 1]), ["a", "b", "c", "d"])
    test = ArrayDataset(images[:4], torch.tensor([3, 2, 1, 0]), ["a", "b", "c", "d"])
    known, held = hold_out_classes(DataSplits(train, test, ["a", "b", "c", "d"], False), [2, 0])
    assert known.classes == ["b", "d"] and held.classes == ["a", "c"]
    assert known.train.labels.tolist() == [0, 1, 0] and known.train.images.flatten().tolist() == [1, 3, 5]
    assert held.train.labels.tolist() == [0, 1, 1] and held.train.images.flatten().tolist() == [0, 2, 4]
    assert known.test.labels.tolist() == [1, 0] and held.test.labels.tolist() == [1, 0]
    folder = ImageFolder(tmp_path, [(tmp_path / f"{i}.png", y) for i, y in enumerate([0, 1, 2, 1])], ["x", "y", "z"])
    k, h = hold_out_classes(DataSplits(folder, folder, ["x", "y", "z"], True), [1])
    assert [(p.name, y) for p, y in k.train.samples] == [("0.png", 0), ("2.png", 1)] and k.train.classes == ["x", "z"]
    assert [(p.name, y) for p, y in h.test.samples] == [("1.png", 0), ("3.png", 0)]


def test_resolve_classes_by_name_then_index():
    assert resolve_classes("cat,1", ["cat", "dog", "emu"], "--hold-out") == [0, 1]
    assert resolve_classes("8, 9", [str(i) for i in range(10)], "--hold-out") == [8, 9]
    with pytest.raises(DataError, match=r"--hold-out: 'cow' is not a class of the data set \(its classes: cat, dog"):
        resolve_classes("cow", ["cat", "dog"], "--hold-out")
    with pytest.raises(DataError, match="named twice"):
        resolve_classes("cat,0", ["cat", "dog"], "--hold-out")
    with pytest.raises(DataError, match="comma-separated"):
        resolve_classes("cat,", ["cat", "dog"], "--hold-out")


# ----- the commands -------------------------------------------------------------------------------------------------

TRAIN = ["train", "--model", "vit_micro_patch4_8", "--data", "digits", "--epochs", "2", "--batch-size", "64"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run trained on digits 0-7 (8 and 9 held out), one on all ten, and two query images."""
    root = tmp_path_factory.mktemp("feat")
    assert main([*TRAIN, "--hold-out", "8,9", "--out", str(root / "open")]) == 0
    assert main([*TRAIN, "--epochs", "1", "--out", str(root / "all")]) == 0
    test = load_data("digits").test
    for i in (0, 1):
        Image.fromarray(test[i][0][0].numpy()).save(root / f"q{i}.png")
    return root


def test_hold_out_run_trains_and_evaluates_on_the_known_classes(runs, capsys):
    model = vitlab.load_checkpoint(runs / "open")
    assert model.num_classes == 8 and list(model.cfg.labels) == [str(i) for i in range(8)]
    assert json.loads((runs / "open" / "config.json").read_text())["task_cfg"]["hold_out"] == "8,9"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(runs / "open")]) == 0
    assert "(289 test samples" in capsys.readouterr().out  # 360 test digits less the 71 eights and nines


def test_train_hold_out_refusals(tmp_path, capsys):
    assert main([*TRAIN, "--hold-out", "0,1,2,3,4,5,6,7,8", "--out", str(tmp_path / "r")]) == 2
    assert "--hold-out 0,1,2,3,4,5,6,7,8 leaves 1 of the classes of --data digits" in capsys.readouterr().err
    assert main([*TRAIN, "--hold-out", "ten", "--out", str(tmp_path / "r")]) == 2
    assert "--hold-out (--data digits): 'ten' is not a class" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_cli_open_set(runs, capsys):
    out = runs / "os"
    assert main(["explain", "open-set", "--checkpoint", str(runs / "open"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    r = json.loads((out / "open_set.json").read_text())
    assert (out / "open_set.png").stat().st_size > 0
    assert r["held_out_classes"] == ["8", "9"] and r["known_test_images"] == 289 and r["held_out_test_images"] == 71
    assert set(r["scores"]) == {"max_logit", "max_softmax", "energy"}
    for name, m in r["scores"].items():
        assert 0 <= m["auroc"] <= 1 and 0 <= m["fpr_at_95_tpr"] <= 1
        assert f"{name.replace('_', '-'):<12} {m['auroc']:>7.4f} {m['fpr_at_95_tpr']:>7.4f}" in printed


@pytest.mark.parametrize(
    ("run", "extra", "error"),
    [
        ("all", [], "was trained on every class of digits: open-set recognition needs classes unseen"),
        ("all", ["--held-out", "9"], "was trained on class(es) 9: held-out classes must be unseen"),
        ("all", ["--held-out", "ten"], "--held-out (--data digits): 'ten' is not a class"),
        ("open", ["--held-out", "9"], "--held-out 9: --checkpoint"),
    ],
)
def test_cli_open_set_refusals(runs, capsys, run, extra, error):
    args = ["explain", "open-set", "--checkpoint", str(runs / run), "--out", str(runs / "x"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert error in err and len(err.strip().splitlines()) == 1


def test_cli_tsne_draws_known_and_held_out_classes(runs, capsys):
    out = runs / "tsne"
    args = ["explain", "tsne", "--checkpoint", str(runs / "open"), "--max-images", "120", "--out", str(out)]
    assert main(args) == 0
    r = json.loads((out / "tsne.json").read_text())
    assert (out / "tsne.png").stat().st_size > 0
    assert 100 <= len(r["points"]) <= 120 and r["feature_dim"] == 64
    assert {p["class"] for p in r["points"] if p["held_out"]} == {"8", "9"}
    assert {p["class"] for p in r["points"] if not p["held_out"]} == {str(i) for i in range(8)}


def test_cli_neighbours(runs, capsys):
    out = runs / "nn"
    cmd = ["explain", "neighbours", "--checkpoint", str(runs / "all"), str(runs / "q0.png"), str(runs / "q1.png")]
    assert main([*cmd, "-k", "3", "--out", str(out)]) == 0
    r = json.loads((out / "neighbours.json").read_text())
    assert (out / "neighbours.png").stat().st_size > 0 and r["indexed"] == 1437
    for q in r["queries"]:
        sims = [h["similarity"] for h in q["neighbours"]]
        assert len(sims) == 3 and sims == sorted(sims, reverse=True) and all(-1 <= s <= 1 for s in sims)
    assert main([*cmd, "-k", "0", "--out", str(out)]) == 2
    assert "-k must be >= 1" in capsys.readouterr().err
