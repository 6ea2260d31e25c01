"""`vitlab train`: run-level flags from TrainConfig, task flags from the chosen task's config (`--task NAME`).

`vitlab train --help` lists the tasks and the flags of the one given (classification by default), so a task's flags
appear only under it: `vitlab train --task distillation --help`.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from vitlab.engine.config import RUN_DEFAULTS, TrainConfig
from vitlab.engine.tasks import TASKS, get_task


def _add_fields(group, cls: type, skip: set[str] = frozenset(), run_defaults: dict | None = None) -> None:
    """One flag per field; a run flag whose default is the task's shows the chosen task's value."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.metadata.get("cli", True):
            continue
        flag = "--" + f.name.replace("_", "-")
        typ, help_ = hints[f.name], f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        if typ is bool:
            group.add_argument(flag, action="store_true", help=help_)
            continue
        base = next((t for t in typing.get_args(typ) if t is not type(None)), typ)
        shown = f.default
        if f.metadata.get("run_default"):
            shown = (run_defaults or {}).get(f.name, RUN_DEFAULTS[f.name])
        group.add_argument(flag, type=base, default=f.default, help=f"{help_} (default: {shown})")


def chosen_task(argv: list[str]) -> str:
    """The value of --task in a train command line (before parsing: it decides which flags exist)."""
    for i, a in enumerate(argv):
        if a == "--task" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--task="):
            return a.split("=", 1)[1]
    return "classification"


def add_parser(sub, argv: list[str]) -> None:
    tasks = "\n".join(f"  {name:<15} {t.help}" for name, t in TASKS.items())
    name = chosen_task(argv)
    task = TASKS.get(name, TASKS["classification"])  # an unknown --task is reported by argparse's choices
    p = sub.add_parser(
        "train", help="train a model and write a run directory with a report",
        description=f"tasks (--task NAME; `vitlab train --task NAME --help` shows its flags):\n{tasks}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--task", choices=list(TASKS), default="classification", help="what to train (see above)")
    _add_fields(p.add_argument_group("run and optimiser"), TrainConfig, skip={"task"}, run_defaults=task.run_defaults)
    if dataclasses.fields(task.config_cls):
        _add_fields(p.add_argument_group(f"--task {task.name}"), task.config_cls)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from vitlab.engine import train

    task = get_task(args.task)
    values = vars(args)
    run_fields = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli", True)}
    task_cfg = task.config_cls(**{f.name: values[f.name] for f in dataclasses.fields(task.config_cls)})
    result = train(TrainConfig(**{k: v for k, v in values.items() if k in run_fields}, task_cfg=task_cfg))
    if not result.is_main:
        return 0
    if result.final is None:
        print(f"stopped after epoch {result.metrics[-1]['epoch']}; continue with --resume --out {result.out}")
        return 0
    ev, metrics = result.evaluator, result.final.metrics
    others = ", ".join(f"{ev.label(k)} {v:.4f}" for k, v in metrics.items() if k != ev.primary)
    print(f"run directory: {result.out}")
    print(f"report: {result.out / 'report.md'}")
    print(f"final test {ev.label(ev.primary)}: {metrics[ev.primary]:.4f}  ({others})")
    print(f"wall time: {result.seconds:.1f} s")
    return 0
