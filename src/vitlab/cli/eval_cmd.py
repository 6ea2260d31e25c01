"""`vitlab eval`: a checkpoint's metrics on a data set's test split, by its task's evaluator."""

from __future__ import annotations

import argparse


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

    from vitlab.cli.common import checkpoint_task, load_model
    from vitlab.engine.evaluators import evaluate
    from vitlab.engine.tasks import get_task
    from vitlab.engine.trainer import resolve_device

    device = resolve_device(args.device)
    task = get_task(args.task or checkpoint_task(args.checkpoint) or "classification").for_evaluation()
    tcfg = task.config_cls()
    model = load_model(args.checkpoint, args.model).to(device)
    data = args.data or task.default_data
    splits = task.load_data(data, args.test_fraction, tcfg)
    task.check_model(model, splits, f"--data {data}")
    _, test_set = task.datasets(splits, model, augment=False)
    evaluator = task.build_evaluator(splits, tcfg)
    r = evaluate(
        model, DataLoader(test_set, args.batch_size, collate_fn=task.collate), evaluator, device, progress=True
    )
    print(f"{args.checkpoint} on {data} ({r.count} test samples, task {task.name})")
    for line in task.summary_lines(r, evaluator, splits):
        print(line)
    return 0
