"""The run directory: what may be written where, one training at a time, and saves that a crash cannot tear.

- `check_out`: before anything is built or written, an `--out` that is a file, unwritable, or a non-empty directory
  that is not a vitlab run is refused; a vitlab run is refused unless resumed or `--overwrite` is given.
- `RunLock`: an exclusive `flock` on `OUT/.lock` for the whole training; a second training into the same directory is
  refused. The kernel drops the lock when the process dies, even by SIGKILL.
- `commit_files` / `recover`: an epoch's files are written into `OUT/.pending/`, then `state.json` is replaced (the
  commit: one rename), then the pending files are renamed into place. A crash before the commit leaves the previous
  epoch untouched (the pending files are dropped on the next start); a crash after it leaves files that `recover`
  moves into place, since state.json already names their epoch.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from pathlib import Path

from vitlab.errors import ConfigError
from vitlab.weights.io import fsync_dir, read_metadata

log = logging.getLogger(__name__)

STATE_JSON = "state.json"
CONFIG_JSON = "config.json"
PENDING = ".pending"
LOCK = ".lock"
# Everything a training writes (the report's figures are *.png); --overwrite removes these and nothing else.
RUN_FILES = (
    CONFIG_JSON, STATE_JSON, "metrics.jsonl", "checkpoint.safetensors", "train_state.safetensors",
    "checkpoint_ema.safetensors", "checkpoint_best.safetensors", "report.md", "final_metrics.json",
)  # fmt: skip


def _own_temporary(name: str) -> bool:
    """`.NAME.XXXX.tmp`, what `atomic_write` leaves of a run file or plot (NAME.png) when killed mid-write."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    target = name[1:].rsplit(".", 2)[0]  # `.curves.png.2_jagsus.tmp` -> `curves.png`
    return target in RUN_FILES or target.endswith(".png")


def is_run(out: Path) -> bool:
    return (out / CONFIG_JSON).is_file()


def has_completed_epoch(out: Path) -> bool:
    return (out / STATE_JSON).is_file()


def check_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse an --out this training must not write to; reads only."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: {existing} is not writable")
    if not out.exists():
        if resume:
            raise ConfigError(f"--resume: {out} does not exist; nothing to resume")
        return
    entries = [p.name for p in out.iterdir() if p.name not in (LOCK, PENDING) and not _own_temporary(p.name)]
    if entries and not is_run(out):
        raise ConfigError(
            f"--out {out} is not empty and holds no vitlab run (no {CONFIG_JSON}); choose a new or empty directory"
        )
    if resume and not is_run(out):
        raise ConfigError(f"--resume: {out / CONFIG_JSON} not found; nothing to resume in {out}")
    if is_run(out) and not resume and not overwrite and has_completed_epoch(out):
        raise ConfigError(
            f"--out {out} already holds a run; pass --resume to continue it, --overwrite to replace it, "
            "or choose another --out"
        )


class RunLock:
    """`with RunLock(out):` holds OUT/.lock exclusively, or raises ConfigError naming the holder."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(f"--out {self.path.parent} is in use by another training (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock; the file stays (removing it would race a new holder)
            self.fd = None


def clear_run(out: Path) -> None:
    """Remove a previous run's files (--overwrite, or a run that never completed an epoch): vitlab's own names only."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for png in out.glob("*.png"):
        png.unlink()
    shutil.rmtree(out / PENDING, ignore_errors=True)
    _remove_temporaries(out)


def _remove_temporaries(out: Path) -> None:
    for p in out.iterdir():
        if _own_temporary(p.name):
            p.unlink(missing_ok=True)


def pending_dir(out: Path) -> Path:
    """An empty OUT/.pending for the next save (what a crash left there is recovered or dropped first)."""
    recover(out)
    stage = out / PENDING
    stage.mkdir()
    return stage


def commit_files(out: Path, write_state) -> None:
    """The commit: `write_state()` replaces state.json atomically; then the pending files are moved into place."""
    stage = out / PENDING
    for f in stage.iterdir():
        _fsync_file(f)
    fsync_dir(stage)
    write_state()
    _promote(out)


def recover(out: Path) -> None:
    """Finish or drop a save a crash interrupted: pending files of the epoch state.json names are moved into place,
    any others (an uncommitted save) removed."""
    _remove_temporaries(out)  # half-written files of a killed save (the caller holds the lock: no one else writes)
    stage = out / PENDING
    if not stage.is_dir():
        return
    committed = _state_epoch(out)
    files = list(stage.iterdir())
    if files and committed is not None and all(_file_epoch(f) == committed for f in files):
        log.info("%s: completing the interrupted save of epoch %d", out, committed)
        _promote(out)
    else:
        shutil.rmtree(stage)


def _promote(out: Path) -> None:
    stage = out / PENDING
    for f in sorted(stage.iterdir()):
        os.replace(f, out / f.name)
    fsync_dir(out)
    stage.rmdir()


def _state_epoch(out: Path) -> int | None:
    try:
        return json.loads((out / STATE_JSON).read_text())["epoch"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _file_epoch(path: Path) -> int | None:
    """The epoch a staged file's metadata names (weights: in `extra`; the training state: `epoch`)."""
    try:
        meta = read_metadata(path)
        if "extra" in meta:
            return json.loads(meta["extra"]).get("epoch")
        return int(meta["epoch"])
    except Exception:  # a torn or foreign file: not part of a committed save
        return None


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
