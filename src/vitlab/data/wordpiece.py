"""BERT's WordPiece tokenizer on the `tokenizers` library, with `ClipTokenizer`'s interface (for a BERT text tower).

Devlin et al., arXiv 1810.04805, sec. 3 / Wu et al., arXiv 1609.08144: text is cleaned, lower-cased (uncased
models), split on white space and punctuation (CJK characters one by one), and each word is split greedily into the
longest vocabulary pieces, continuation pieces prefixed with `##`; a word with no split is `[UNK]`. A sentence is
`[CLS] ... [SEP]`, padded with `[PAD]` (id 0: `vitlab.data.batches.collate_captions` pads with 0, and
`BertTextTower` masks id 0 out).

Read from a transformers directory: its `tokenizer.json` (the full pipeline, as `AutoTokenizer` reads it; its
padding and truncation settings are replaced by `context_length`), else its `vocab.txt` with BERT's uncased
normaliser, pre-tokeniser and [CLS]/[SEP] template built here. Ids equal transformers' `BertTokenizer` (the Python
reference) on the same vocabulary (tests/test_bert_text.py). Nothing here downloads.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from vitlab.errors import DataError

__all__ = ["WordPieceTokenizer"]

PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"


def _from_vocab_txt(path: Path) -> Tokenizer:
    try:
        tokens = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    vocab = {t: i for i, t in enumerate(tokens) if t}  # one token per line, its id = its line number
    missing = [t for t in (PAD, UNK, CLS, SEP) if t not in vocab]
    if missing:
        raise DataError(f"{path}: a BERT vocabulary has {', '.join(missing)}; this one does not")
    tok = Tokenizer(WordPiece(vocab, unk_token=UNK, continuing_subword_prefix="##", max_input_chars_per_word=100))
    # BertTokenizer's defaults for an uncased vocabulary: clean control characters, split CJK, lower-case, strip
    # accents (with lowercase, as BasicTokenizer does when strip_accents is unset)
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", special_tokens=[(CLS, vocab[CLS]), (SEP, vocab[SEP])]
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens([PAD, UNK, CLS, SEP, *(t for t in ("[MASK]",) if t in vocab)])
    return tok


class WordPieceTokenizer:
    """Text -> (B, context_length) int64 ids, `[CLS] ... [SEP]` then [PAD] (0); cut to `context_length` ids."""

    def __init__(self, tokenizer: Tokenizer, context_length: int = 512, source: str = "") -> None:
        self.context_length = context_length
        self.source = source
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        ids = {t: tokenizer.token_to_id(t) for t in (PAD, CLS, SEP)}
        if None in ids.values():
            raise DataError(f"{source}: not a BERT tokenizer (no {', '.join(t for t, i in ids.items() if i is None)})")
        if ids[PAD] != 0:
            raise DataError(f"{source}: [PAD] has id {ids[PAD]}; vitlab pads captions with 0, so it must be 0")
        self.cls_id, self.sep_id = ids[CLS], ids[SEP]
        tokenizer.no_padding()  # the batch is padded by the collate (to its longest) or by __call__
        tokenizer.enable_truncation(max_length=context_length)  # [CLS] and [SEP] are kept within it
        self._tok = tokenizer

    @classmethod
    def from_pretrained(cls, path: str | Path, context_length: int = 512) -> WordPieceTokenizer:
        """A transformers directory holding tokenizer.json or vocab.txt, or one of those files."""
        p = Path(path).expanduser()
        file = next((p / n for n in ("tokenizer.json", "vocab.txt") if (p / n).is_file()), None) if p.is_dir() else p
        if file is None or not file.is_file():
            raise DataError(f"{p}: no WordPiece vocabulary here (expected tokenizer.json or vocab.txt)")
        if file.suffix == ".json":
            try:
                tok = Tokenizer.from_file(str(file))
            except Exception as e:  # the Rust library raises a bare Exception on a malformed file
                raise DataError(f"{file}: not a tokenizers file ({e})") from None
            if type(tok.model).__name__ != "WordPiece":
                raise DataError(f"{file}: a {type(tok.model).__name__} tokenizer, not BERT's WordPiece")
        else:
            tok = _from_vocab_txt(file)
        return cls(tok, context_length, str(file))

    def encode(self, text: str) -> list[int]:
        """Ids of one text with [CLS] and [SEP], at most `context_length` of them."""
        return self._tok.encode(text).ids

    def tokens(self, text: str) -> list[str]:
        """The pieces one text splits into ([CLS] and [SEP] included)."""
        return self._tok.encode(text).tokens

    def id_to_token(self, i: int) -> str:
        return self._tok.id_to_token(i)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        """(B, context_length) int64, [PAD]-padded; a single string gives B = 1."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, enc in enumerate(self._tok.encode_batch(texts)):
            out[i, : len(enc.ids)] = torch.tensor(enc.ids)
        return out
