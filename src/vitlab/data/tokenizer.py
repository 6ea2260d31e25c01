"""CLIP's text tokenizer on the `tokenizers` library.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", arXiv 2103.00020, §2.4:
a lower-cased byte-level BPE with a 49,152-token vocabulary, `<|startoftext|>`/`<|endoftext|>` around each text and
a 77-token context. The reference code runs its own Python BPE loop (with ftfy for text repair); here the Rust BPE of
`tokenizers` does the work, with NFC + whitespace collapsing + lower-casing as the normaliser (ftfy is not a
dependency: text it would repair is assumed already clean). Ids equal HF transformers' `CLIPTokenizer` on the same
vocabulary (tests/test_clip_tokenizer.py).

Two vocabulary layouts are read:
- CLIP's `bpe_simple_vocab_16e6.txt.gz` (a header line, then merges); the vocabulary is rebuilt from the merges the
  way the reference does: the 256 byte symbols, the same with the end-of-word marker `</w>`, one token per merge,
  then the two special tokens (49,408 in all). `make install` takes the file from the PyPI package `open-clip-torch`
  (`pip download --no-deps`) into `<venv>/share/vitlab/`; `find_clip_vocab` looks there.
- HF's `vocab.json` + `merges.txt` from a `save_pretrained` directory.

`train_clip_bpe` fits a new vocabulary of the same kind on a caption corpus (`vitlab tokenizer train`): the same
normaliser and pre-tokeniser, merges learnt by the `tokenizers` BPE trainer, and the vocabulary laid out as CLIP's
(bytes, bytes + `</w>`, one token per merge, the two special tokens last, so end-of-text is the largest id, which
CLIP's text pooling needs); `save_hf_layout` writes it as vocab.json + merges.txt.

Nothing here downloads.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from vitlab.errors import DataError

__all__ = ["ClipTokenizer", "find_clip_vocab", "save_hf_layout", "train_clip_bpe", "CLIP_VOCAB_FILE"]

CLIP_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
_EOW = "</w>"  # marks the last symbol of a word, so "a" inside a word and "a" at its end are different tokens
_NUM_MERGES = 49152 - 256 - 2  # the reference keeps the first 48,894 merges of the file

# One word-piece per match: a special token, an English contraction, a run of letters, a single digit, or a run of
# other non-space symbols (CLIP's pre-tokenisation; digits are split one by one).
_SPLIT = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE, in byte order (GPT-2's table).

    Bytes that are printable Latin-1 characters stand for themselves; the other 68 are mapped to code points
    256, 257, ... in byte order. The vocabulary's first 256 ids follow the printable bytes first, then the rest.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in keep] + [table[b] for b in range(256) if b not in keep]


def find_clip_vocab(path: str | Path | None = None) -> Path | None:
    """The CLIP BPE file: `path` if given (a file or a directory holding it), else the copy `make install` put in
    `<sys.prefix>/share/vitlab/`. None when there is none."""
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / CLIP_VOCAB_FILE
        if not p.is_file():
            raise DataError(f"{p}: no CLIP BPE vocabulary here (expected {CLIP_VOCAB_FILE} or a directory holding it)")
        return p
    p = Path(sys.prefix) / "share" / "vitlab" / CLIP_VOCAB_FILE
    return p if p.is_file() else None


def _read_clip_bpe(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]  # line 0 is a version header
    return _clip_layout(merges), merges


def _clip_layout(merges: list[tuple[str, str]]) -> dict[str, int]:
    symbols = byte_symbols()
    tokens = symbols + [s + _EOW for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
    return {t: i for i, t in enumerate(tokens)}


def _read_hf_dir(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
    lines = (path / "merges.txt").read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
    return vocab, merges


def _normalizer():
    return normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(), normalizers.Lowercase()]
    )


def _pre_tokenizer():
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT), behavior="removed", invert=True),  # keep matches, drop spaces
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def train_clip_bpe(
    texts, vocab_size: int, min_frequency: int = 2, show_progress: bool = False
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of a CLIP-style BPE fitted on `texts` (an iterable of strings), at most `vocab_size` tokens
    (512 byte symbols + merges + 2 special tokens; fewer when the corpus runs out of pairs seen min_frequency times)."""
    from tokenizers.trainers import BpeTrainer

    base = 2 * 256 + 2
    if vocab_size <= base:
        raise ValueError(f"vocab_size must exceed {base} (the byte symbols, with and without </w>, and 2 specials)")
    tok = Tokenizer(BPE(end_of_word_suffix=_EOW))
    tok.normalizer, tok.pre_tokenizer = _normalizer(), _pre_tokenizer()
    symbols = byte_symbols()
    trainer = BpeTrainer(
        vocab_size=vocab_size - 2, min_frequency=min_frequency, initial_alphabet=symbols, end_of_word_suffix=_EOW,
        show_progress=show_progress, limit_alphabet=256,
    )  # fmt: skip
    tok.train_from_iterator(texts, trainer)
    learnt = json.loads(tok.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learnt]
    layout = set(symbols) | {s + _EOW for s in symbols}
    # CLIP's layout holds each byte symbol with and without </w>; the trainer may merge to a token already there
    # ("a" + "</w>" -> "a</w>"): such merges add no token, and are kept so the same words split the same way.
    merges = [m for m in merges if "".join(m) not in layout][: vocab_size - base]
    return _clip_layout(merges), merges


def save_hf_layout(vocab: dict[str, int], merges: list[tuple[str, str]], out: Path) -> None:
    """vocab.json + merges.txt (HF's `save_pretrained` files), readable by `ClipTokenizer.from_pretrained(out)`."""
    from vitlab.weights.io import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(vocab, ensure_ascii=False)
    atomic_write(out / "vocab.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    lines = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    atomic_write(out / "merges.txt", lambda tmp: Path(tmp).write_text(lines, encoding="utf-8"))


class ClipTokenizer:
    """Text -> (B, context_length) int64 ids, `<|startoftext|> ... <|endoftext|>` then zeros.

    Texts longer than the context are cut so that the last kept id is `<|endoftext|>`, as in the reference.
    """

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], context_length: int = 77):
        self.context_length = context_length
        self.vocab_size = len(vocab)
        self.sot_id, self.eot_id = vocab[SOT], vocab[EOT]
        tok = Tokenizer(BPE(vocab=vocab, merges=merges, end_of_word_suffix=_EOW, unk_token=EOT, fuse_unk=False))
        tok.normalizer, tok.pre_tokenizer = _normalizer(), _pre_tokenizer()
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.TemplateProcessing(
            single=f"{SOT} $A {EOT}", special_tokens=[(SOT, self.sot_id), (EOT, self.eot_id)]
        )
        tok.add_special_tokens([SOT, EOT])  # written inside a text they are the special ids, as in the reference
        tok.enable_truncation(max_length=context_length)  # the template's two ids are reserved within it
        self._tok = tok

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, context_length: int = 77) -> ClipTokenizer:
        """CLIP's `.txt.gz` file, a directory holding it or HF's vocab.json + merges.txt; None: the installed copy."""
        if path is not None and Path(path).is_dir() and (Path(path) / "vocab.json").is_file():
            p = Path(path)
            if not (p / "merges.txt").is_file():
                raise DataError(f"{p}: vocab.json found but no merges.txt beside it")
            return cls(*_read_hf_dir(p), context_length=context_length)
        found = find_clip_vocab(path)
        if found is None:
            raise DataError(
                f"no CLIP BPE vocabulary: pass a path, or run `make install`, which takes {CLIP_VOCAB_FILE} "
                f"from the open-clip-torch wheel into {Path(sys.prefix) / 'share' / 'vitlab'}"
            )
        return cls(*_read_clip_bpe(found), context_length=context_length)

    def encode(self, text: str) -> list[int]:
        """Ids of one text with its start and end tokens, at most `context_length` of them."""
        return self._tok.encode(text).ids

    def id_to_token(self, i: int) -> str:
        """The vocabulary entry of one id, as stored (byte symbols, `</w>` at word ends)."""
        return self._tok.id_to_token(i)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode([i for i in ids if i not in (0, self.sot_id, self.eot_id)]).replace(_EOW, " ").strip()

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        """(B, context_length) int64, zero-padded; a single string gives B = 1."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, enc in enumerate(self._tok.encode_batch(texts)):
            out[i, : len(enc.ids)] = torch.tensor(enc.ids)
        return out
