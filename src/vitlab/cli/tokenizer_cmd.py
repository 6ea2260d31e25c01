"""`vitlab tokenizer train` fits a CLIP-style BPE on captions; `vitlab tokenizer encode` shows how a text splits.

vitlab tokenizer train --captions captions --vocab-size 1000 --out runs/bpe      # the generated caption set
vitlab tokenizer train --captions caps.csv --vocab-size 8000 --out runs/bpe      # a caption file (CSV / JSONL)
vitlab train --task clip --tokenizer runs/bpe ...
vitlab tokenizer encode --tokenizer runs/bpe "a small red circle on the left"
vitlab tokenizer encode --tokenizer minilm "a crimson disc"                       # BERT's WordPiece (LiT's MiniLM)
"""

from __future__ import annotations

import argparse

WORDPIECE_FILES = ("tokenizer.json", "vocab.txt")  # a BERT directory's; CLIP's BPE directories hold vocab.json


def add_parser(sub, argv: list[str]) -> None:
    p = sub.add_parser("tokenizer", help="fit a CLIP-style BPE vocabulary on captions, or show a text's tokens")
    kinds = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = kinds.add_parser(
        "train",
        help="fit a byte-level BPE on a caption corpus; writes vocab.json + merges.txt",
        description="Learns merges with the `tokenizers` BPE trainer under CLIP's normalisation (lower case, "
        "whitespace collapsed) and pre-tokenisation; the vocabulary is laid out as CLIP's, end-of-text last. "
        "Give the directory to `vitlab train --task clip --tokenizer DIR`.",
    )
    t.add_argument("--captions", required=True, action="append",
                   help="'captions' (the generated set's training captions), a CSV/JSONL caption file, or a text "
                        "file of one caption per line (.txt); may be given several times")  # fmt: skip
    t.add_argument("--vocab-size", type=int, default=8192, help="tokens at most, the 514 byte symbols and specials "
                                                                "included (default: 8192)")  # fmt: skip
    t.add_argument("--min-frequency", type=int, default=2, help="a pair is merged only if seen this often")
    t.add_argument("--out", required=True, help="directory to write (must not hold a vocabulary already)")
    t.add_argument("--overwrite", action="store_true", help="replace vocab.json + merges.txt in --out")
    t.set_defaults(run=run_train)
    e = kinds.add_parser("encode", help="print a text's token ids and pieces")
    e.add_argument("text", nargs="+", help="text(s) to encode")
    e.add_argument("--tokenizer", default=None, help="vocabulary (default: CLIP's installed one); 'minilm', a "
                                                    "tokenizer.json / vocab.txt or a directory with one: BERT's "
                                                    "WordPiece (a --text-tower's)")  # fmt: skip
    e.add_argument("--json", action="store_true", help="print JSON")
    e.set_defaults(run=run_encode)


def read_corpus(spec: str) -> list[str]:
    from pathlib import Path

    from vitlab.errors import DataError

    if spec == "captions":
        from vitlab.data.captions import generated_captions

        return generated_captions(4000, seed=0, train=True).captions
    path = Path(spec)
    if path.suffix.lower() == ".txt":
        try:
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        except FileNotFoundError:
            raise DataError(f"--captions {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"--captions {path}: cannot read it as UTF-8 text ({e})") from None
        texts = [ln for ln in lines if ln]
    else:
        from vitlab.data.captions import caption_rows

        texts = caption_rows(path)
    if not texts:
        raise DataError(f"--captions {path} holds no caption")
    return texts


def run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vitlab.data.tokenizer import ClipTokenizer, save_hf_layout, train_clip_bpe
    from vitlab.errors import ConfigError

    if args.vocab_size <= 514:
        raise ConfigError(
            f"--vocab-size must exceed 514 (512 byte symbols and 2 special tokens), got {args.vocab_size}"
        )
    if args.min_frequency < 1:
        raise ConfigError(f"--min-frequency must be >= 1, got {args.min_frequency}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory")
    if not args.overwrite and any((out / n).exists() for n in ("vocab.json", "merges.txt")):
        raise ConfigError(f"--out {out} already holds a vocabulary; pass --overwrite to replace it")
    texts = [t for spec in args.captions for t in read_corpus(spec)]
    vocab, merges = train_clip_bpe(texts, args.vocab_size, args.min_frequency)
    try:
        save_hf_layout(vocab, merges, out)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write ({e.strerror or e})") from None
    tok = ClipTokenizer.from_pretrained(out)
    lengths = [len(tok.encode(t)) - 2 for t in texts]
    print(f"{len(vocab)} tokens ({len(merges)} merges) from {len(texts)} captions -> {out}/vocab.json, merges.txt")
    print(f"tokens per caption: mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)} "
          f"(context {tok.context_length}: longer captions are cut)")  # fmt: skip
    print(f"train with: vitlab train --task clip --tokenizer {out}")
    return 0


def run_encode(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from vitlab.cli.text import printable
    from vitlab.data.tokenizer import ClipTokenizer
    from vitlab.data.wordpiece import WordPieceTokenizer
    from vitlab.weights.bert import find_bert_dir

    spec = args.tokenizer
    path = None if spec is None else Path(spec)
    wordpiece = path is not None and (
        spec == "minilm" or path.suffix in (".json", ".txt") or any((path / n).is_file() for n in WORDPIECE_FILES)
    )
    if wordpiece:
        tok = WordPieceTokenizer.from_pretrained(find_bert_dir(spec) if spec == "minilm" else path)
    else:
        tok = ClipTokenizer.from_pretrained(spec)
    rows = []
    for text in args.text:
        ids = tok.encode(text)
        rows.append({"text": text, "ids": ids, "tokens": [tok.id_to_token(i) for i in ids]})
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    for r in rows:
        print(printable(f"{r['text']}: {len(r['ids'])} ids"))
        print("  " + " ".join(str(i) for i in r["ids"]))
        print("  " + printable(" | ".join(r["tokens"])))
    return 0
