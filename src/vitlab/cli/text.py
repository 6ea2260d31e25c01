"""Text from files (class names in a checkpoint, folder names, paths) made safe to print on a terminal."""

from __future__ import annotations

import unicodedata


def printable(text: object) -> str:
    """`text` on one line with every control or format character (ESC, newline, bidi override) shown as `?`.

    A checkpoint's labels come from whoever wrote the file: printed raw, an escape sequence could rewrite the
    terminal (retitle it, hide lines) and a newline could forge output lines.
    """
    return "".join("?" if unicodedata.category(c)[0] == "C" else c for c in str(text))
