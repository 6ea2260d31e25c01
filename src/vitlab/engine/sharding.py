"""Fully sharded data parallel training (`--fsdp`) with PyTorch's own FSDP2 (`fully_shard`).

Every repeated block of the model (stages, blocks, residual layers: the elements of its `nn.Sequential` /
`nn.ModuleList` containers, innermost first) becomes one FSDP unit, then the root: a rank holds 1/world of every
weight, gradient and AdamW moment, and gathers one block's weights at a time for its forward and backward.
Checkpoints stay the plain single-process files: the full weights and optimizer state are gathered to rank 0 before
writing, and scattered back from them on resume, so a run can be resumed with or without `--fsdp` and on another
number of ranks.
"""

from __future__ import annotations

import torch
from torch import nn


def _units(model: nn.Module) -> list[nn.Module]:
    """Repeated blocks (stages, blocks, layers) to shard one by one, children before their parents (fully_shard's
    order). Heterogeneous containers such as a stem (conv, norm) stay in their parent's unit."""
    units: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        children = list(m.children())
        for child in children:
            visit(child)
        if isinstance(m, nn.Sequential | nn.ModuleList):
            kinds = [type(c) for c in children]
            units.extend(c for c in children if kinds.count(type(c)) > 1 and any(True for _ in c.parameters()))

    visit(model)
    return units


def shard_model(model: nn.Module, device: torch.device) -> int:
    """Shard `model` in place over all ranks of the default process group; returns the number of FSDP units."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    units = _units(model)
    for unit in units:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return len(units) + 1


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the optimizer's parameters in the order of their integer ids in `optimizer.state_dict()`."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Gather (weights, optimizer state) of a sharded model: every rank must call it; rank 0 gets the full tensors.

    The optimizer state comes back in `optimizer.state_dict()`'s layout (integer parameter ids), as one process has.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=opts)
    named = get_optimizer_state_dict(model, optimizer, options=opts)
    if not weights:  # not rank 0
        return {}, {}
    ids = {n: i for i, n in enumerate(_param_names(model, optimizer))}
    state = {ids[n]: st for n, st in named["state"].items()}
    groups = [{**g, "params": [ids[n] for n in g["params"]]} for g in named["param_groups"]]
    return weights, {"state": state, "param_groups": groups}


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict, opt_state: dict) -> None:
    """Inverse of `full_state`: scatter full weights and optimizer state (integer ids) into the shards."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=opts)
    names = _param_names(model, optimizer)
    named = {
        "state": {names[i]: st for i, st in opt_state["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in opt_state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, named, options=opts)
