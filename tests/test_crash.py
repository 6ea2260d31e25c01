"""Fault injection: a training killed (SIGKILL) at any write, a full disk, a second training into the same directory,
and directories that are not vitlab's, must leave a run that continues to the same result and touch nothing else."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from vitlab.cli.main import main
from vitlab.engine import TrainConfig, train
from vitlab.engine.rundir import RunLock
from vitlab.errors import CheckpointError, ConfigError

ARGS = ["train", "--epochs", "3", "--batch-size", "256", "--warmup-epochs", "0.5"]

# Runs `vitlab` with os.replace and os.fsync counted (every atomic write and commit goes through them) and the
# process SIGKILLed at event number K: a kill before, inside and after each step of a save.
KILLER = textwrap.dedent("""
    import os, signal, sys
    K, n = int(sys.argv[1]), [0]
    real_replace, real_fsync = os.replace, os.fsync
    def hit():
        n[0] += 1
        if n[0] == K:
            os.kill(os.getpid(), signal.SIGKILL)
    def replace(*a, **k):
        hit()
        return real_replace(*a, **k)
    def fsync(fd):
        hit()
        return real_fsync(fd)
    os.replace, os.fsync = replace, fsync
    from vitlab.cli.main import main
    code = main(sys.argv[2:])
    print("EVENTS", n[0])
    sys.exit(code)
""")


def _vitlab(kill_at: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-c", KILLER, str(kill_at), *args], capture_output=True, text=True, env=env, timeout=600
    )


def _finish(out, args) -> None:
    """What a user does after a crash: the same command again (no epoch finished) or --resume."""
    for _ in range(3):
        resume = ["--resume"] if (out / "state.json").is_file() else []
        r = _vitlab(0, *args, "--out", str(out), *resume)
        assert r.returncode == 0, r.stderr
        if "final test" in r.stdout:
            return
    raise AssertionError("the run did not finish")


def _reference(tmp_path_factory, args):
    """An uninterrupted run: its final weights, and how many write events it made."""
    out = tmp_path_factory.mktemp("ref") / "run"
    r = _vitlab(0, *args, "--out", str(out))
    assert r.returncode == 0, r.stderr
    events = int(r.stdout.rsplit("EVENTS", 1)[1])
    return load_file(out / "checkpoint.safetensors"), events


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return _reference(tmp_path_factory, ARGS)


def _check_same(out, weights, epochs: int) -> None:
    got = load_file(out / "checkpoint.safetensors")
    assert got.keys() == weights.keys()
    for k in weights:
        assert torch.equal(got[k], weights[k]), k
    assert not (out / ".pending").exists() and not list(out.glob(".*.tmp"))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, epochs + 1))


def _killed_then_finished(tmp_path, reference, k: int, args=ARGS, epochs: int = 3) -> None:
    weights, _ = reference
    out = tmp_path / f"k{k}"
    r = _vitlab(k, *args, "--out", str(out))
    assert r.returncode == -9, (k, r.returncode, r.stderr[-500:])
    _finish(out, args)
    _check_same(out, weights, epochs)


def test_kill_inside_saves_and_the_report(tmp_path, reference):
    """Two kills inside the first epoch's save: before its commit and after it, while files are moved into place;
    one while the final report's plot is written (every write event of a save and the report in the slow test)."""
    # events 1-3 write config.json; the first save then writes three files (3 events each), fsyncs them (4),
    # commits state.json (3, the rename being the 15th of the save) and moves the files into place (4)
    _, events = reference
    for k in (3 + 10, 3 + 17, events - 4):
        _killed_then_finished(tmp_path, reference, k)


@pytest.mark.slow
def test_kill_at_every_write_event_of_a_save_over_a_saved_epoch(tmp_path, tmp_path_factory, reference):
    """A 2-epoch run killed at each write after epoch 1's save: epoch 2's save (where a complete epoch is already on
    disk) and the final report. Epoch 1's save is the same code with nothing before it."""
    args = [*ARGS[:2], "2", *ARGS[3:]]
    ref = _reference(tmp_path_factory, args)
    per_epoch = reference[1] - ref[1]  # the 3-epoch run's events minus the 2-epoch run's: one epoch's
    assert per_epoch >= 15, per_epoch
    for k in range(3 + per_epoch + 1, ref[1] + 1):
        _killed_then_finished(tmp_path, ref, k, args, epochs=2)


def test_disk_full_during_a_save_keeps_the_last_epoch(tmp_path, monkeypatch):
    import vitlab.weights.io as io

    out = tmp_path / "run"
    real, calls = io.save_file, [0]

    def full_disk(*a, **k):
        calls[0] += 1
        if calls[0] > 3:  # the second epoch's save (the first wrote checkpoint, best, train state)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(io, "save_file", full_disk)
    cfg = dict(epochs=2, batch_size=256, warmup_epochs=0.5)
    with pytest.raises(CheckpointError, match="saving epoch 2 .*No space left on device.*--resume"):
        train(TrainConfig(out=str(out), **cfg))
    assert json.loads((out / "state.json").read_text())["epoch"] == 1
    monkeypatch.setattr(io, "save_file", real)
    r = train(TrainConfig(out=str(out), resume=True))
    assert r.final is not None and [m["epoch"] for m in r.metrics] == [1, 2]


def test_a_second_training_into_the_same_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    with RunLock(out):
        code = main([*ARGS, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "in use by another training" in err[0]
    assert [p.name for p in out.iterdir()] == [".lock"]  # nothing written by the refused run


def test_directories_that_are_not_runs_are_never_touched(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("report.md", "curves.png", "checkpoint.safetensors", "metrics.jsonl"):
        (mine / name).write_text("the user's own " + name)
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = ((mine, "not empty and holds no vitlab run"), (afile, "is a file"), (afile / "run", "is a file"))
    for out, says in cases:
        for extra in ([], ["--overwrite"], ["--resume"]):
            assert main([*ARGS, "--out", str(out), *extra]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and says in err[0], err
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before and afile.read_text() == "x"


def test_unwritable_out_is_refused_before_data_and_model(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes everywhere")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main([*ARGS, "--out", str(ro / "run")]) == 2
        assert "is not writable" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


def test_overwrite_replaces_only_the_runs_files_and_files_follow_the_umask(tmp_path):
    out = tmp_path / "run"
    cfg = dict(epochs=1, batch_size=256, warmup_epochs=0.5)
    train(TrainConfig(out=str(out), **cfg))
    (out / "notes.txt").write_text("kept")
    with pytest.raises(ConfigError, match="already holds a run.*--overwrite"):
        train(TrainConfig(out=str(out), **cfg))
    r = train(TrainConfig(out=str(out), overwrite=True, **{**cfg, "seed": 1}))
    assert [m["epoch"] for m in r.metrics] == [1] and (out / "notes.txt").read_text() == "kept"
    assert json.loads((out / "config.json").read_text())["seed"] == 1
    mask = os.umask(0)
    os.umask(mask)
    for name in ("checkpoint.safetensors", "config.json", "state.json", "report.md"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_a_run_killed_in_its_first_epoch_restarts_with_the_same_command(tmp_path):
    out = tmp_path / "run"
    cfg = dict(epochs=1, batch_size=256, warmup_epochs=0.5)
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"epochs": 1}))  # what a kill during epoch 1 leaves
    (out / "metrics.jsonl").write_text("")
    assert train(TrainConfig(out=str(out), **cfg)).final is not None
    (out / "state.json").unlink()  # --resume of a run without a completed epoch starts it again too
    assert [m["epoch"] for m in train(TrainConfig(out=str(out), resume=True)).metrics] == [1]
