"""The BERT text encoder against transformers' BertModel (random small weights, and the shipped all-MiniLM-L6-v2),
its WordPiece tokenizer against transformers' BertTokenizer, mean pooling by hand, and the converter's errors."""

from __future__ import annotations

import sys

import pytest
import torch

from vitlab.data.wordpiece import WordPieceTokenizer
from vitlab.errors import CheckpointError, DataError
from vitlab.models.bert_text import MINILM_L6, BertConfig, BertEncoder, mean_pool
from vitlab.weights.bert import MINILM_DIR, convert_bert_hf, find_bert_dir, read_bert_dir

transformers = pytest.importorskip("transformers")

try:
    MINILM = find_bert_dir("minilm")
except CheckpointError:
    MINILM = None
needs_minilm = pytest.mark.skipif(MINILM is None, reason="all-MiniLM-L6-v2 is not installed (run `make install`)")

TEXTS = [
    "a small red circle on the left",
    "Héllo, WORLD!! naïve café — don't stop; x2.5 = 3/4?",
    "unbelievably-long-hyphenated\twords\nand ☃ emoji 🙂 東京タワー",
    "   ",
    "the the the quick brown fox jumps over the lazy dog " * 3,
]
# A small uncased vocabulary: specials, single characters (so any ASCII word splits), a few words and ## pieces.
SMALL_VOCAB = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + list("abcdefghijklmnopqrstuvwxyz0123456789.,!?;'-/=")
    + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    + ["the", "red", "small", "circle", "left", "on", "##ing", "##s", "quick", "fox", "un", "##believ", "##ably"]
)


def _small_hf_dir(tmp_path, seed: int = 0, prefix_model: bool = False):
    """A random small HF BERT (every LayerNorm perturbed too, so each weight matters) saved with its tokenizer."""
    cfg = transformers.BertConfig(
        vocab_size=len(SMALL_VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=40, hidden_act="gelu",
    )  # fmt: skip
    torch.manual_seed(seed)
    hf = (transformers.BertForMaskedLM if prefix_model else transformers.BertModel)(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path)  # model.safetensors + config.json
    (tmp_path / "vocab.txt").write_text("\n".join(SMALL_VOCAB) + "\n", encoding="utf-8")
    transformers.BertTokenizerFast(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)  # tokenizer.json
    return hf.bert if prefix_model else hf


def _compare(hf, model, ids: torch.Tensor) -> None:
    mask = ids.ne(0)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask.long())
        hidden = model(ids, mask)
        torch.testing.assert_close(hidden, ref.last_hidden_state, atol=1e-4, rtol=0)
        m = mask[..., None].float()
        torch.testing.assert_close(model.embed(ids), (ref.last_hidden_state * m).sum(1) / m.sum(1), atol=1e-4, rtol=0)
        if model.pooler is not None:
            torch.testing.assert_close(model.pooled(hidden), ref.pooler_output, atol=1e-4, rtol=0)


def _encoder(path) -> BertEncoder:
    fields, state = read_bert_dir(path)
    model = BertEncoder(BertConfig(**fields, pooler="pooler.weight" in state)).eval()
    model.load_state_dict(state)  # strict: every HF weight has a place, every vitlab weight a source
    return model


def test_random_small_bert_matches_transformers(tmp_path):
    hf = _small_hf_dir(tmp_path)
    model = _encoder(tmp_path)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in hf.parameters())
    tok = WordPieceTokenizer.from_pretrained(tmp_path, context_length=40)
    _compare(hf, model, tok(TEXTS)[:, :30])  # padded rows: the padding mask matters


def test_task_model_state_dicts_lose_their_prefix_and_heads(tmp_path):
    hf = _small_hf_dir(tmp_path, seed=1, prefix_model=True)  # bert.* keys + the cls.* masked-LM head, no pooler
    model = _encoder(tmp_path)
    assert model.pooler is None
    _compare(hf, model, torch.tensor([[2, 60, 61, 3, 0, 0], [2, 5, 9, 70, 71, 3]]))
    with_pooler = transformers.BertModel(hf.config).state_dict()
    no_pooler = convert_bert_hf(with_pooler, pooler=False)
    assert "pooler.weight" in convert_bert_hf(with_pooler) and no_pooler.keys() == model.state_dict().keys()


def test_wordpiece_ids_equal_transformers_bert_tokenizer(tmp_path):
    _small_hf_dir(tmp_path)
    slow = transformers.BertTokenizer(str(tmp_path / "vocab.txt"))  # the Python reference
    from_json = WordPieceTokenizer.from_pretrained(tmp_path)  # tokenizer.json
    from_txt = WordPieceTokenizer.from_pretrained(tmp_path / "vocab.txt")  # vitlab's own pipeline
    for text in TEXTS:
        ref = slow(text)["input_ids"]
        assert from_json.encode(text) == ref and from_txt.encode(text) == ref, text
    assert from_txt.tokens("unbelievably quick") == ["[CLS]", "un", "##believ", "##ably", "quick", "[SEP]"]
    assert from_txt.decode(from_txt.encode("the quick fox")) == "the quick fox"
    short = WordPieceTokenizer.from_pretrained(tmp_path, context_length=5)
    ids = short(["the quick brown fox jumps", "a"])
    assert (
        ids.shape == (2, 5) and ids[0, -1] == short.sep_id and ids[1].tolist() == [2, SMALL_VOCAB.index("a"), 3, 0, 0]
    )


def test_mean_pool_by_hand():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert mean_pool(hidden, mask).tolist() == [[2.0, 3.0], [7.0, 8.0]]  # the padded 100s do not count


def test_padding_does_not_change_the_embedding():
    model = BertEncoder(BertConfig(vocab_size=50, width=16, depth=2, num_heads=2, mlp_dim=32, max_positions=12)).eval()
    ids = torch.tensor([[2, 7, 8, 9, 3]])
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    with torch.no_grad():
        torch.testing.assert_close(model.embed(padded), model.embed(ids), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="T <= 12"):
        model(torch.zeros(1, 13, dtype=torch.long))


def test_converter_and_loader_errors(tmp_path):
    with pytest.raises(CheckpointError, match="layer 0 has \\['key', 'query'\\]"):
        convert_bert_hf({f"encoder.layer.0.attention.self.{p}.weight": torch.zeros(2, 2) for p in ("query", "key")})
    with pytest.raises(CheckpointError, match="'classifier.weight' is not a BertModel weight"):
        convert_bert_hf({"classifier.weight": torch.zeros(2, 2)})
    (tmp_path / "config.json").write_text('{"model_type": "bert", "hidden_act": "relu"}')
    with pytest.raises(CheckpointError, match="hidden_act='relu'"):
        read_bert_dir(tmp_path)
    with pytest.raises(DataError, match="no WordPiece vocabulary"):
        WordPieceTokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("[UNK]\na\n")
    with pytest.raises(DataError, match="\\[PAD\\], \\[CLS\\], \\[SEP\\]"):
        WordPieceTokenizer.from_pretrained(tmp_path)


def test_missing_minilm_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    with pytest.raises(CheckpointError) as e:
        find_bert_dir("minilm")
    assert str(tmp_path / "share" / "vitlab" / MINILM_DIR) in str(e.value) and "make install" in str(e.value)
    with pytest.raises(CheckpointError, match="not a transformers BERT directory"):
        find_bert_dir(tmp_path / "nowhere")


@needs_minilm
def test_minilm_matches_transformers_automodel():
    hf = transformers.AutoModel.from_pretrained(MINILM).eval()
    assert type(hf).__name__ == "BertModel"
    model = _encoder(MINILM)
    assert model.cfg == MINILM_L6  # the defaults are all-MiniLM-L6-v2's sizes
    n = sum(p.numel() for p in model.parameters())
    assert n == sum(p.numel() for p in hf.parameters()) == 22_713_216
    tok = WordPieceTokenizer.from_pretrained(MINILM)
    fast = transformers.AutoTokenizer.from_pretrained(MINILM)
    slow = transformers.BertTokenizer(str(MINILM / "vocab.txt"))
    for text in TEXTS:
        assert tok.encode(text) == fast(text)["input_ids"] == slow(text)["input_ids"], text
    assert tok.vocab_size == 30522 and tok.tokens("a crimson disc")[1:-1] == ["a", "crimson", "disc"]
    _compare(hf, model, tok(TEXTS)[:, :48])
