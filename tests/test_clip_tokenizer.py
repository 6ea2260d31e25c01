"""CLIP tokenizer: ids equal HF transformers' CLIPTokenizer on the same vocabulary; context, truncation, layouts."""

from __future__ import annotations

import json

import pytest
import torch

from vitlab.data.tokenizer import ClipTokenizer, byte_symbols, find_clip_vocab
from vitlab.errors import DataError

VOCAB = find_clip_vocab()
needs_vocab = pytest.mark.skipif(
    VOCAB is None, reason="CLIP's bpe_simple_vocab_16e6.txt.gz is not installed (run `make install`)"
)

TEXTS = [
    "a photo of a cat.",
    "A PHOTO of a Dog!!",
    "   leading and   trailing\twhitespace\n\nnew lines  ",
    "it's what they've said: we'll, I'd, you're, I'm",
    "numbers 1234567 and 3.14159, -42, 1e-9 and 10%",
    "punctuation ... !?;:()[]{}<>/\\|@#$^&*_+=~`\"'",
    "unicode: café naïve résumé Über straße",
    "emoji 🐱🐶 and symbols ©®™ ½",
    "中文 日本語 한국어 русский ελληνικά عربى",
    "e\u0301 composed by NFC",
    "<|startoftext|> special tokens inside <|endoftext|> text",
    "",
    "word " * 100,
    "a very long caption " + "with many different words such as zebra, giraffe and aardvark " * 12,
]


@pytest.fixture(scope="module")
def tok() -> ClipTokenizer:
    return ClipTokenizer.from_pretrained(VOCAB)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, tok):
    """The same vocabulary written in HF's vocab.json + merges.txt layout."""
    from vitlab.data.tokenizer import _read_clip_bpe

    vocab, merges = _read_clip_bpe(VOCAB)
    d = tmp_path_factory.mktemp("hf_clip_tok")
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    return d


def test_byte_symbols_are_a_permutation_of_256_printable_chars():
    s = byte_symbols()
    assert len(set(s)) == 256
    assert s[0] == "!" and s[93] == "~" and all(c.isprintable() for c in s)
    assert s[188] == chr(256)  # byte 0, the first non-printable byte, comes right after the 188 printable ones


@needs_vocab
def test_vocab_size_and_known_ids(tok):
    assert tok.vocab_size == 49408
    assert (tok.sot_id, tok.eot_id) == (49406, 49407)
    # "a photo of a cat." in the original CLIP vocabulary
    assert tok.encode("a photo of a cat.") == [49406, 320, 1125, 539, 320, 2368, 269, 49407]


@needs_vocab
@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_ids_equal_hf_clip_tokenizer(tok, hf_dir, text):
    from transformers import CLIPTokenizer

    hf = _hf_tokenizer(CLIPTokenizer, hf_dir)
    expected = hf(text, truncation=True, max_length=77)["input_ids"]
    assert tok.encode(text) == expected


_HF = {}


def _hf_tokenizer(cls, d):
    if d not in _HF:
        _HF[d] = cls.from_pretrained(str(d))
    return _HF[d]


@needs_vocab
def test_batch_is_padded_and_truncated_ending_in_eot(tok):
    ids = tok(["a cat", "word " * 200])
    assert ids.shape == (2, 77) and ids.dtype == torch.long
    assert ids[0, :4].tolist() == [49406, 320, 2368, 49407] and ids[0, 4:].eq(0).all()
    assert ids[1, 0] == 49406 and ids[1, -1] == 49407 and ids[1].ne(0).all()


@needs_vocab
def test_hf_layout_gives_the_same_ids(tok, hf_dir):
    tok_hf = ClipTokenizer.from_pretrained(hf_dir)
    for text in TEXTS:
        assert tok_hf.encode(text) == tok.encode(text)


@needs_vocab
def test_decode_round_trips_lower_cased_words(tok):
    assert tok.decode(tok.encode("A Red  Circle")) == "a red circle"


def test_missing_vocab_names_the_path(tmp_path):
    with pytest.raises(DataError, match="no CLIP BPE vocabulary here"):
        ClipTokenizer.from_pretrained(tmp_path / "nope.txt.gz")
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(DataError, match="merges.txt"):
        ClipTokenizer.from_pretrained(tmp_path)


# ----- a vocabulary fitted here (`vitlab tokenizer train`) ------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    from vitlab.data.captions import generated_captions
    from vitlab.data.tokenizer import save_hf_layout, train_clip_bpe

    corpus = generated_captions(400, seed=0, train=True).captions + [t for t in TEXTS if t] * 3
    vocab, merges = train_clip_bpe(corpus, vocab_size=900, min_frequency=2)
    d = tmp_path_factory.mktemp("bpe")
    save_hf_layout(vocab, merges, d)
    return d


def test_a_fitted_vocabulary_is_laid_out_as_clips(trained_dir):
    tok = ClipTokenizer.from_pretrained(trained_dir)
    assert 514 < tok.vocab_size <= 900
    assert tok.eot_id == tok.vocab_size - 1 and tok.sot_id == tok.vocab_size - 2  # end-of-text is the largest id
    ids = tok.encode("a small red circle on the left")
    assert len(ids) == 9  # every word of the corpus became one token
    assert tok.decode(ids) == "a small red circle on the left"
    assert tok.decode(tok.encode("zyxw qqq")) == "zyxw qqq"  # unseen words still encode, byte by byte


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_a_fitted_vocabulary_gives_hf_clip_tokenizers_ids(trained_dir, text):
    from transformers import CLIPTokenizer

    hf = _hf_tokenizer(CLIPTokenizer, trained_dir)
    assert (
        ClipTokenizer.from_pretrained(trained_dir).encode(text) == hf(text, truncation=True, max_length=77)["input_ids"]
    )


def test_tokenizer_train_cli_then_clip_training_with_it(tmp_path, capsys):
    from tests.test_cli import run_cli
    from vitlab.cli.main import main

    (tmp_path / "caps.txt").write_text("a red circle\nA BLUE square\n\n" * 20)
    out = tmp_path / "bpe"
    args = ["tokenizer", "train", "--captions", "captions", "--captions", str(tmp_path / "caps.txt")]
    assert main([*args, "--vocab-size", "700", "--out", str(out)]) == 0
    assert "from 4040 captions" in capsys.readouterr().out
    before = (out / "vocab.json").read_bytes()
    for extra, message in [
        (["--out", str(out)], "already holds a vocabulary; pass --overwrite"),
        (["--out", str(tmp_path / "x"), "--vocab-size", "514"], "--vocab-size must exceed 514"),
        (["--out", str(tmp_path / "caps.txt")], "is a file, not a directory"),
    ]:
        r = run_cli(*args, *extra)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (extra, r.stderr)
    r = run_cli("tokenizer", "train", "--captions", str(tmp_path / "none.txt"), "--out", str(tmp_path / "y"))
    assert r.returncode == 2 and "none.txt does not exist" in r.stderr
    assert (out / "vocab.json").read_bytes() == before  # the refused runs left the vocabulary alone
    assert main(["tokenizer", "encode", "--tokenizer", str(out), "--json", "a purple cross"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["tokens"][1:-1] == ["a</w>", "purple</w>", "cross</w>"]
    run = tmp_path / "run"
    train = ["train", "--task", "clip", "--tokenizer", str(out), "--captions-train", "64", "--captions-val", "20"]
    assert main([*train, "--epochs", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["zeroshot", "--checkpoint", str(run), "--data", "captions", "--json"]) == 0  # the run's tokenizer
    assert json.loads(capsys.readouterr().out)["data"]["count"] == 20
