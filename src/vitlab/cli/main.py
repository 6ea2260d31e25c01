"""`vitlab` entry point: dispatches to sub-commands; user errors end in one line and a non-zero exit code."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from vitlab.errors import VitlabError

SUBCOMMANDS = (
    "train",
    "eval",
    "predict",
    "detect",
    "zeroshot",
    "segment",
    "index",
    "search",
    "tokenizer",
    "export",
    "explain",
    "denoise",
    "data",
    "models",
    "bench",
    "scaling",
)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """argv decides which flags exist: `vitlab train --task NAME` shows that task's flags only."""
    import importlib

    parser = argparse.ArgumentParser(prog="vitlab", description="vision transformers: train, evaluate, inspect")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"vitlab.cli.{name}_cmd").add_parser(sub, argv)
    return parser


def main(argv: list[str] | None = None) -> int:
    from vitlab.runtime import keep_freed_memory

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    if os.environ.get("VITLAB_MALLOC", "") != "default":  # the command's opt-out; the library never reads it
        keep_freed_memory()  # up to a quarter of small-model CPU time is page faults otherwise (see vitlab.runtime)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stdout, force=True
    )
    try:
        return args.run(args) or 0
    except VitlabError as e:
        from vitlab.cli.text import printable

        print(f"vitlab {args.command}: error: {printable(e)}", file=sys.stderr)  # one line, whatever a file held
        return 2
    except KeyboardInterrupt:
        print(f"vitlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
