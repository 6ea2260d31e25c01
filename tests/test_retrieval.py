"""The retrieval index: flat = brute-force cosine top-k, IVF's recall on clustered data, the directory round trip and
its damage, recall@K through the index = the CLIP evaluator's, and `vitlab index build` / `vitlab search` /
`vitlab index eval` end to end on a small trained CLIP run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from vitlab.cli.main import main
from vitlab.data.captions import generated_captions
from vitlab.data.tokenizer import find_clip_vocab
from vitlab.engine.evaluators.clip import retrieval_recall
from vitlab.errors import ConfigError, DataError
from vitlab.retrieval import INDEX_FILE, META_FILE, PATHS_FILE, ImageIndex, default_nlist, index_recall


def _clustered(n: int, dim: int, clusters: int, seed: int, spread: float = 0.1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(clusters, dim, generator=g), dim=1)
    return centres[torch.randint(0, clusters, (n,), generator=g)] + spread * torch.randn(n, dim, generator=g)


def _brute_force(x: torch.Tensor, q: torch.Tensor, k: int):
    return (F.normalize(q, dim=1) @ F.normalize(x, dim=1).t()).topk(k, dim=1)


# ----- the index ------------------------------------------------------------------------------------------------------


def test_flat_index_is_brute_force_cosine_top_k():
    g = torch.Generator().manual_seed(0)
    x, q = 3 * torch.randn(500, 24, generator=g), torch.randn(7, 24, generator=g)  # not unit norm: the index normalises
    index = ImageIndex.build(x, [f"{i}.png" for i in range(500)])
    assert index.meta.kind == "flat" and index.meta.count == 500 and index.meta.dim == 24
    scores, ids = index.search(q, 10)
    ref = _brute_force(x, q, 10)
    assert ids.tolist() == ref.indices.tolist()
    assert np.allclose(scores, ref.values.numpy(), atol=1e-5)
    assert np.allclose(index.vectors([3, 4]), F.normalize(x[[3, 4]], dim=1).numpy(), atol=1e-6)
    scores, ids = index.search(q[:1], 10_000)  # k above N: every vector once, best first
    assert sorted(ids[0].tolist()) == list(range(500)) and (np.diff(scores[0]) <= 1e-6).all()


def test_ivf_recall_on_clustered_data_and_exact_when_every_cell_is_visited():
    x, q = _clustered(6000, 32, 60, seed=1), _clustered(200, 32, 60, seed=2)
    index = ImageIndex.build(x, [""] * 6000, kind="ivf", nprobe=16)
    assert index.meta.kind == "ivf" and index.meta.nlist == default_nlist(6000) == 153  # min(4 sqrt(N), N / 39)
    exact = _brute_force(x, q, 10).indices.numpy()
    recall = lambda ids: np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact, strict=True)])  # noqa: E731
    r1, r4, r16 = (recall(index.search(q, 10, nprobe=p)[1]) for p in (1, 4, None))  # None: the index's 16
    assert r16 > 0.95 and r1 < r4 < r16  # more cells visited, better recall (measured 0.34, 0.75, 0.97)
    _, every = index.search(q, 10, nprobe=index.meta.nlist)
    assert recall(every) == 1.0
    again = ImageIndex.build(x, [""] * 6000, kind="ivf", nprobe=16)  # the same vectors give the same cells
    assert np.array_equal(again.search(q, 10)[1], index.search(q, 10)[1])
    assert np.allclose(index.vectors([5]), F.normalize(x[[5]], dim=1).numpy(), atol=1e-6)


def test_auto_kind_and_build_checks():
    assert ImageIndex.build(torch.randn(50, 4), [""] * 50, kind="auto").meta.kind == "flat"
    assert default_nlist(10**6) == 4000 and default_nlist(10**5) == 1265 and default_nlist(10) == 1
    with pytest.raises(ConfigError, match="--kind must be one of auto, flat, ivf"):
        ImageIndex.build(torch.randn(5, 4), [""] * 5, kind="hnsw")
    with pytest.raises(ConfigError, match=r"--nlist must be in \[1, 5\]"):
        ImageIndex.build(torch.randn(5, 4), [""] * 5, kind="ivf", nlist=9)
    with pytest.raises(ValueError, match="non-zero"):
        ImageIndex.build(torch.zeros(5, 4), [""] * 5)
    index = ImageIndex.build(torch.randn(5, 4), [""] * 5)
    with pytest.raises(ConfigError, match="-k must be >= 1, got 0"):
        index.search(torch.randn(1, 4), 0)
    with pytest.raises(ConfigError, match="width 3"):
        index.search(torch.randn(1, 3), 2)


def test_save_load_round_trip_and_overwrite(tmp_path):
    x = _clustered(400, 16, 8, seed=3)
    index = ImageIndex.build(x, [f"/img/{i}.png" for i in range(400)], kind="ivf", nprobe=3, checkpoint="/runs/c")
    index.save(tmp_path / "ix")
    assert sorted(p.name for p in (tmp_path / "ix").iterdir()) == sorted([INDEX_FILE, PATHS_FILE, META_FILE])
    back = ImageIndex.load(tmp_path / "ix")
    assert back.paths == index.paths and back.meta == index.meta and back.meta.nprobe == 3
    q = x[:5]
    assert np.array_equal(back.search(q, 4)[1], index.search(q, 4)[1])
    with pytest.raises(ConfigError, match="already holds an index; pass --overwrite"):
        index.save(tmp_path / "ix")
    ImageIndex.build(x[:10], [""] * 10).save(tmp_path / "ix", overwrite=True)
    assert len(ImageIndex.load(tmp_path / "ix")) == 10
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds no vitlab index"):
        index.save(tmp_path / "other", overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def _damage(d: Path, what: str) -> None:
    meta = json.loads((d / META_FILE).read_text())
    if what == "flipped byte":
        data = bytearray((d / INDEX_FILE).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (d / INDEX_FILE).write_bytes(bytes(data))
    elif what == "unreadable":  # bytes faiss cannot parse, with a checksum that matches them
        (d / INDEX_FILE).write_bytes(b"not a faiss index at all")
        import hashlib

        meta["sha256"] = hashlib.sha256(b"not a faiss index at all").hexdigest()
        (d / META_FILE).write_text(json.dumps(meta))
    elif what == "no index file":
        (d / INDEX_FILE).unlink()
    elif what == "bad meta":
        (d / META_FILE).write_text("{oops")
    elif what == "short paths":
        (d / PATHS_FILE).write_text(json.dumps(["a.png"]))


@pytest.mark.parametrize(
    "what, message",
    [
        ("flipped byte", f"{INDEX_FILE} is corrupt: its SHA-256 differs"),
        ("unreadable", f"{INDEX_FILE}: faiss cannot read it"),
        ("no index file", f"{INDEX_FILE} is missing"),
        ("bad meta", f"{META_FILE}: cannot read it as JSON"),
        ("short paths", f"{PATHS_FILE} lists 1 images but the index holds 30 vectors"),
    ],
)
def test_a_damaged_index_is_one_error_naming_the_file(tmp_path, what, message):
    ImageIndex.build(torch.randn(30, 8), [f"{i}.png" for i in range(30)]).save(tmp_path / "ix")
    _damage(tmp_path / "ix", what)
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        ImageIndex.load(tmp_path / "ix")


def test_a_missing_index_is_one_error(tmp_path):
    with pytest.raises(DataError, match="does not exist; build it with `vitlab index build"):
        ImageIndex.load(tmp_path / "nope")
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        ImageIndex.load(tmp_path / "f")


def test_index_recall_equals_the_evaluators_exact_recall():
    g = torch.Generator().manual_seed(4)
    texts = F.normalize(torch.randn(25, 16, generator=g), dim=1)
    caption_of = torch.randint(0, 25, (80,), generator=g)
    caption_of[:25] = torch.arange(25)  # every caption carried by some image
    images = F.normalize(texts[caption_of] + 0.9 * torch.randn(80, 16, generator=g), dim=1)
    index = ImageIndex.build(images, [""] * 80)
    got = index_recall(index, texts, range(80), caption_of.tolist())
    assert got == retrieval_recall(images, texts, caption_of.tolist())
    assert 0 < got["i2t_r1"] < got["i2t_r10"] < 1  # neither trivial nor perfect: the comparison has content
    # an image without a caption is a distractor: it can only push text -> image hits down
    noisy = ImageIndex.build(torch.cat([images, texts]), [""] * 105)  # the captions' own vectors, uncaptioned
    assert index_recall(noisy, texts, range(80), caption_of.tolist())["t2i_r1"] == 0.0


def test_image_files_walks_folders_sorted_and_takes_each_file_once(tmp_path):
    from vitlab.cli.index_cmd import image_files

    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/z.png", "a/deep/b.JPG", "a/notes.txt", "c.png"):
        (tmp_path / name).write_bytes(b"")
    got = image_files([str(tmp_path / "a"), str(tmp_path / "c.png"), str(tmp_path / "a" / "z.png")])
    assert got == [str((tmp_path / n).resolve()) for n in ("a/deep/b.JPG", "a/z.png", "c.png")]
    with pytest.raises(DataError, match="x.png does not exist"):
        image_files([str(tmp_path / "x.png")])


def test_data_captions_writes_the_generated_split_as_files(tmp_path, capsys):
    from vitlab.data.captions import read_caption_file
    from vitlab.data.datasets import read_image

    assert main(["data", "captions", "--out", str(tmp_path / "c"), "--count", "6", "--seed", "3"]) == 0
    files, ref = read_caption_file(tmp_path / "c" / "captions.jsonl"), generated_captions(6, seed=3, train=False)
    assert files.captions == ref.captions
    assert all(torch.equal(read_image(p), img) for p, img in zip(files.paths, ref.images, strict=True))
    assert main(["data", "captions", "--out", str(tmp_path / "c")]) == 2
    assert "already exists" in capsys.readouterr().err


# ----- through the CLI on a trained run ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory) -> Path:
    """A 1-epoch CLIP run and 40 captioned images of the generated set (`vitlab data captions`: caps/images/*.png +
    caps/captions.jsonl)."""
    if find_clip_vocab() is None:
        pytest.skip("CLIP's BPE vocabulary is not installed")
    root = tmp_path_factory.mktemp("retrieval")
    args = ["train", "--task", "clip", "--captions-train", "192", "--captions-val", "40", "--batch-size", "32"]
    assert main([*args, "--epochs", "1", "--out", str(root / "run")]) == 0
    assert main(["data", "captions", "--out", str(root / "caps"), "--count", "40", "--seed", "7"]) == 0
    return root


def test_build_then_search_by_text_and_by_image(clip_files, tmp_path, capsys):
    root, ix = clip_files, tmp_path / "ix"
    one = str(root / "caps" / "images" / "00000.png")
    assert (
        main(
            ["index", "build", "--checkpoint", str(root / "run"), "--out", str(ix), str(root / "caps" / "images"), one]
        )
        == 0
    )
    assert "indexed 40 images (flat, exact; 64-d embeddings of clip_vit_tiny_patch8_32)" in capsys.readouterr().out
    meta = json.loads((ix / META_FILE).read_text())
    assert meta["checkpoint"] == str((root / "run").resolve()) and meta["vitlab_version"] and meta["count"] == 40

    assert main(["search", str(ix), "a small red circle on the left", "-k", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    scores = [r["score"] for r in out["results"]]
    assert [r["rank"] for r in out["results"]] == [1, 2, 3, 4, 5] and scores == sorted(scores, reverse=True)
    assert all(-1 <= s <= 1 for s in scores) and all(Path(r["path"]).is_file() for r in out["results"])
    # the same search by hand: the run's text embedding against every image embedding
    from vitlab.cli.index_cmd import image_files
    from vitlab.data.tokenizer import ClipTokenizer
    from vitlab.factory import load_checkpoint
    from vitlab.retrieval import encode_images, encode_texts

    model = load_checkpoint(root / "run").eval()
    paths = image_files([str(root / "caps" / "images")])
    t = encode_texts(model, ClipTokenizer.from_pretrained(), ["a small red circle on the left"])
    ref = (t @ encode_images(model, paths).t()).topk(5)
    assert [r["path"] for r in out["results"]] == [paths[i] for i in ref.indices[0].tolist()]
    assert np.allclose(scores, ref.values[0].numpy(), atol=1e-5)

    grid = tmp_path / "grid.png"
    assert main(["search", str(ix), "--image", one, "-k", "3", "--grid", str(grid)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rank, score, path = lines[0].split()
    assert rank == "1" and path == str(Path(one).resolve()) and float(score) == pytest.approx(1.0, abs=1e-4)
    assert len(lines) == 4 and lines[-1] == f"grid: {grid}"  # 3 results, then the picture
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(grid).size[0] > 3 * Image.open(grid).size[1]


def test_index_eval_equals_the_clip_evaluator_and_ivf_builds(clip_files, tmp_path, capsys):
    from vitlab.data import ImageTransform
    from vitlab.data.captions import read_caption_file
    from vitlab.data.tokenizer import ClipTokenizer
    from vitlab.engine.evaluators.base import evaluate
    from vitlab.engine.evaluators.clip import ClipEvaluator
    from vitlab.engine.tasks import get_task
    from vitlab.engine.tasks.clip import TokenisedCaptions
    from vitlab.factory import load_checkpoint

    root, ix = clip_files, tmp_path / "ix"
    assert (
        main(["index", "build", "--checkpoint", str(root / "run"), "--out", str(ix), str(root / "caps" / "images")])
        == 0
    )
    capsys.readouterr()
    assert main(["index", "eval", str(ix), "--captions", str(root / "caps" / "captions.jsonl"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    model, tok = load_checkpoint(root / "run").eval(), ClipTokenizer.from_pretrained()
    data = TokenisedCaptions(read_caption_file(root / "caps" / "captions.jsonl"), ImageTransform.for_model(model), tok)
    loader = DataLoader(data, 16, collate_fn=get_task("clip").collate)
    ref = evaluate(model, loader, ClipEvaluator(tok), torch.device("cpu"))
    assert {k: got[k] for k in ref.recall} == ref.recall and got["r_mean"] == pytest.approx(ref.r_mean)
    assert got["rows"] == 40 and got["kind"] == "flat"

    ivf = tmp_path / "ivf"
    assert main(["index", "build", "--checkpoint", str(root / "run"), "--out", str(ivf), "--kind", "ivf",
                 "--nlist", "4", "--nprobe", "4", str(root / "caps" / "images")]) == 0  # fmt: skip
    assert "ivf, 4 cells, nprobe 4" in capsys.readouterr().out
    assert main(["index", "eval", str(ivf), "--captions", str(root / "caps" / "captions.jsonl"), "--json"]) == 0
    every_cell = json.loads(capsys.readouterr().out)
    assert {k: every_cell[k] for k in ref.recall} == ref.recall  # all cells visited: exact again


def test_bad_input_is_one_clear_error(clip_files, tmp_path, capsys):
    root, ix = clip_files, tmp_path / "ix"
    run, imgs = str(root / "run"), str(root / "caps" / "images")
    assert main(["index", "build", "--checkpoint", run, "--out", str(ix), imgs]) == 0
    (tmp_path / "stray.txt").write_text("")
    (tmp_path / "empty").mkdir()
    caps = tmp_path / "other.jsonl"
    caps.write_text(json.dumps({"image": "stray.txt", "caption": "x"}) + "\n")
    capsys.readouterr()
    for args, message in [
        (["search", str(tmp_path / "none"), "a red circle"], "none does not exist"),
        (["search", str(ix), "a red circle", "-k", "0"], "-k must be >= 1, got 0"),
        (["search", str(ix), "--image", str(tmp_path / "ghost.png")], "ghost.png"),
        (["search", str(ix), "--image", str(tmp_path / "stray.txt")], "stray.txt"),
        (["search", str(ix)], "give one query"),
        (["search", str(ix), "x", "--image", imgs + "/00000.png"], "give one query"),
        (["search", str(ix), "x", "--grid", str(tmp_path / "g.jpg")], "name it *.png"),
        (["search", str(ix), "x", "--nprobe", "0"], "--nprobe must be >= 1"),
        (["index", "build", "--checkpoint", run, "--out", str(ix), imgs], "already holds an index; pass --overwrite"),
        (["index", "build", "--checkpoint", run, "--out", str(tmp_path / "n"), str(tmp_path / "empty")], "no images"),
        (["index", "build", "--checkpoint", run, "--out", str(tmp_path / "n"), "nope.png"], "nope.png does not exist"),
        (["index", "eval", str(ix), "--captions", str(caps)], "not in index"),
    ]:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "n").exists()
    data = bytearray((ix / INDEX_FILE).read_bytes())
    data[-1] ^= 1
    (ix / INDEX_FILE).write_bytes(bytes(data))
    assert main(["search", str(ix), "a red circle"]) == 2
    assert f"{INDEX_FILE} is corrupt" in capsys.readouterr().err
