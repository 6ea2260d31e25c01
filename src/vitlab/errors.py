"""Errors meant for users: the CLI prints their message alone (no traceback) and exits non-zero."""

from __future__ import annotations


class VitlabError(Exception):
    """Base class: the message names the file, key or argument, what was expected and what was found."""


class UnknownModelError(VitlabError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class CheckpointError(VitlabError):
    pass


class DataError(VitlabError):
    pass


class ConfigError(VitlabError, ValueError):
    pass


def shape_text(x) -> str:
    """A tensor's shape as `tuple(x.shape)` prints it, `(1, 3, 8, 8)`, also inside TorchScript (which has no
    `tuple(list)`); for error messages of input checks that scripted models compile."""
    dims = [str(d) for d in x.shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


class TrainingDiverged(VitlabError, FloatingPointError):
    """The loss became NaN or infinite; the run directory keeps its last completed epoch."""
