"""`vitlab eval`: a checkpoint's metrics on a data set's test split, by its task's evaluator."""

from __future__ import annotations

import argparse
import math


def add_parser(sub, argv: list[str]) -> None:
    from vitlab.cli.common import add_checkpoint_args
    from vitlab.engine.tasks import TASKS

    p = sub.add_parser("eval", help="evaluate a checkpoint with its task's metrics (classification: top-1, top-5)")
    add_checkpoint_args(p)
    p.add_argument(
        "--task", choices=list(TASKS), default=None,
        help="evaluator to use (default: the task the checkpoint was trained for, else classification)",
    )  # fmt: skip
    p.add_argument("--data", default=None, help="data spec, as for train (its test split is used; default: digits)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--test-fraction", type=float, default=0.2, help="as for train, for data without a test split")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from vitlab.cli.common import checkpoint_task, load_model, run_task_config
    from vitlab.cli.text import printable
    from vitlab.engine.evaluators import evaluate
    from vitlab.engine.tasks import get_task
    from vitlab.engine.trainer import resolve_device
    from vitlab.errors import CheckpointError, ConfigError

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0 < args.test_fraction < 1:  # also refuses nan
        raise ConfigError(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
    device = resolve_device(args.device)
    model = load_model(args.checkpoint, args.model).to(device)
    task = get_task(args.task or checkpoint_task(args.checkpoint) or task_for_model(model)).for_evaluation()
    tcfg = run_task_config(args.checkpoint, task)
    data = args.data or task.default_data
    splits = task.load_data(data, args.test_fraction, tcfg)
    task.check_model(model, splits, f"--data {data}")
    _check_finite_weights(model, args.checkpoint)
    _, test_set = task.datasets(splits, model, False, tcfg)
    evaluator = task.build_evaluator(splits, tcfg)
    r = evaluate(
        model, DataLoader(test_set, args.batch_size, collate_fn=task.collate), evaluator, device, progress=True
    )
    # finite weights can still overflow: a NaN is not a score (but COCO's AP of a size range without objects is nan)
    nan = [evaluator.label(k) for k, v in r.metrics.items() if math.isnan(v) and k in evaluator.must_be_finite()]
    if nan:
        raise CheckpointError(
            f"--checkpoint {args.checkpoint}: the model outputs NaN on --data {data} ({', '.join(nan)} is NaN)"
        )
    print(printable(f"{args.checkpoint} on {data} ({r.count} test samples, task {task.name})"))
    for line in task.summary_lines(r, evaluator, splits):
        print(printable(line))  # class names are folder names: whatever bytes the data set's author chose
    return 0


def task_for_model(model) -> str:
    """The task that trains this kind of model (a transformers CLIP or DETR directory does not name its task)."""
    from vitlab.engine.tasks import TASKS, get_task
    from vitlab.errors import UnknownModelError
    from vitlab.registry import get_entry

    try:
        kind = get_entry(model.model_name).kind
    except (AttributeError, UnknownModelError):  # a model outside the registry: the classifier default
        return "classification"
    return next((name for name in TASKS if get_task(name).model_kind == kind), "classification")


def _check_finite_weights(model, checkpoint: str) -> None:
    import torch

    from vitlab.errors import CheckpointError

    for name, v in model.state_dict().items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(
                f"--checkpoint {checkpoint}: weight {name} holds NaN or infinite values; the model outputs NaN"
            )
