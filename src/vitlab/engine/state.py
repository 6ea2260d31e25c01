"""Run-directory checkpoints: weights (vitlab safetensors), training state (safetensors + state.json).

An epoch's files are written into OUT/.pending and committed by replacing `state.json`, which names the epoch, then
moved into place (`vitlab.engine.rundir`): a crash at any instant leaves the previous epoch or the new one. The tensor
files carry the epoch in their metadata too, so files of different epochs are never mixed on resume.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from vitlab.engine.rundir import STATE_JSON, commit_files, pending_dir, recover
from vitlab.errors import CheckpointError
from vitlab.factory import save_checkpoint
from vitlab.weights import CHECKPOINT_FILE
from vitlab.weights.io import atomic_write, read_tensors, write_tensors

TRAIN_STATE = "train_state.safetensors"
EMA_FILE = "checkpoint_ema.safetensors"
BEST_FILE = "checkpoint_best.safetensors"


def save_run_state(
    out: Path,
    *,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    ema_model: nn.Module | None,
    extra: dict,
    gathered: tuple[dict, dict] | None = None,
    task: str = "classification",
    best: bool = False,
) -> None:
    """One committed save of epoch `epoch`. gathered: (weights, optimizer state) of a sharded model, from
    `sharding.full_state`; best: the weights are also the best so far (checkpoint_best.safetensors).

    The weight files carry the epoch and the task in their metadata (`vitlab eval` picks its evaluator by the task).
    """
    tag = {"epoch": epoch, "task": task}
    weights, opt = gathered if gathered is not None else (model.state_dict(), optimizer.state_dict())
    stage = pending_dir(out)
    save_checkpoint(model, stage / CHECKPOINT_FILE, extra=tag, state_dict=weights)
    if best:
        save_checkpoint(model, stage / BEST_FILE, extra=tag, state_dict=weights)
    if ema_model is not None:
        save_checkpoint(ema_model, stage / EMA_FILE, extra=tag)
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, st in opt["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = v
            else:
                scalars.setdefault(str(idx), {})[k] = v
    if ema_model is not None:
        tensors.update({f"ema.{k}": v for k, v in ema_model.state_dict().items()})
    write_tensors(stage / TRAIN_STATE, tensors, {"epoch": str(epoch)})
    state = {
        "epoch": epoch,
        "optimizer": {"param_groups": [{k: v for k, v in g.items() if k != "params"} for g in opt["param_groups"]]},
        "optimizer_scalars": scalars,
        "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
        # Randomness is re-derived from (seed, epoch) at every epoch start, so the seed restores it exactly.
        "rng": {"seed": extra.get("seed"), "reseeded_per_epoch": True},
        **extra,
    }
    text = json.dumps(state, indent=2)
    commit_files(out, lambda: atomic_write(out / STATE_JSON, lambda tmp: Path(tmp).write_text(text)))


def load_run_state(
    out: Path, *, model: nn.Module, optimizer, scheduler, ema_model: nn.Module | None, sharded: bool = False
) -> dict:
    """Restore everything saved by `save_run_state`; returns state.json's content.

    sharded: the model is FSDP-sharded; the full tensors are scattered into each rank's shards.
    """
    recover(out)  # a save a crash interrupted: finished if it was committed, dropped if not
    state_file = out / STATE_JSON
    if not state_file.is_file():
        raise CheckpointError(f"--resume: {state_file} not found (no completed epoch in {out})")
    try:
        state = json.loads(state_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"--resume: {state_file} is not valid JSON ({e})") from None
    missing = [k for k in ("epoch", "optimizer", "scheduler") if not isinstance(state, dict) or k not in state]
    if missing or not isinstance(state["epoch"], int):
        raise CheckpointError(f"--resume: {state_file} lacks {', '.join(missing) or 'an integer epoch'}; it is damaged")
    epoch = state["epoch"]
    weights, meta = read_tensors(out / CHECKPOINT_FILE)
    train, tmeta = read_tensors(out / TRAIN_STATE)
    saved_epoch = json.loads(meta.get("extra", "{}")).get("epoch")
    if saved_epoch != epoch or tmeta.get("epoch") != str(epoch):
        raise CheckpointError(
            f"--resume: {out} holds files from different epochs (state.json {epoch}, {CHECKPOINT_FILE} "
            f"{saved_epoch}, {TRAIN_STATE} {tmeta.get('epoch')}); the last save was interrupted"
        )
    opt_state: dict = {"state": {}, "param_groups": []}
    for key, v in train.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            opt_state["state"].setdefault(int(idx), {})[name] = v
    for idx, sc in state.get("optimizer_scalars", {}).items():
        opt_state["state"].setdefault(int(idx), {}).update(sc)
    current = optimizer.state_dict()["param_groups"]
    if len(current) != len(state["optimizer"]["param_groups"]):
        raise CheckpointError(f"--resume: {state_file} has a different optimizer layout than this model")
    opt_state["param_groups"] = [
        {**saved, "params": cur["params"]}
        for saved, cur in zip(state["optimizer"]["param_groups"], current, strict=True)
    ]
    if sharded:
        from vitlab.engine.sharding import load_full_state

        load_full_state(model, optimizer, weights, opt_state)
    else:
        model.load_state_dict(weights)
        optimizer.load_state_dict(opt_state)
    # LambdaLR keeps its schedule functions out of the state; they are rebuilt from the config.
    scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": [None] * len(optimizer.param_groups)})
    if ema_model is not None:
        ema = {k[len("ema.") :]: v for k, v in train.items() if k.startswith("ema.")}
        if not ema:
            raise CheckpointError(f"--resume with --ema, but {out / TRAIN_STATE} has no EMA weights")
        ema_model.load_state_dict(ema)
    return state
