"""`vitlab eval`: a checkpoint's metrics on a data set's test split, by its task's evaluator; or, with `--knn` /
`--linear-probe`, the quality of its frozen pooled features (any image model: self-supervised or classifier)."""

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
    p.add_argument("--knn", action="store_true", help="k-NN accuracy of the frozen features (training split as the "
                   "reference set), instead of the task's metrics")  # fmt: skip
    p.add_argument("--linear-probe", action="store_true",
                   help="accuracy of a logistic regression fitted on the training split's frozen features")  # fmt: skip
    p.add_argument("--knn-k", type=int, default=20, help="neighbours for --knn (DINO: 20)")
    p.add_argument("--knn-temperature", type=float, default=0.07, help="vote temperature for --knn (DINO: 0.07)")
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
    if args.knn or args.linear_probe:
        return run_representation(args, model, device)
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


def run_representation(args: argparse.Namespace, model, device) -> int:
    """--knn / --linear-probe: the checkpoint's pooled features of the data's training split (reference) and test
    split (queries), whatever task trained it."""
    from torch.utils.data import DataLoader

    from vitlab.cli.common import checkpoint_task
    from vitlab.cli.text import printable
    from vitlab.data import ImageTransform, load_data
    from vitlab.data.batches import collate_features
    from vitlab.engine.evaluators import evaluate
    from vitlab.engine.evaluators.knn import BankAndQueries, RepresentationEvaluator
    from vitlab.engine.tasks import TASKS, get_task
    from vitlab.errors import ConfigError

    if args.knn_k < 1 or not (math.isfinite(args.knn_temperature) and args.knn_temperature > 0):
        raise ConfigError(f"--knn-k must be >= 1 and --knn-temperature > 0, got {args.knn_k}, {args.knn_temperature}")
    if not hasattr(model, "forward_head") and not hasattr(model, "encode_image"):
        raise ConfigError(f"--checkpoint {args.checkpoint}: {type(model).__name__} has no pooled image features")
    trained = checkpoint_task(args.checkpoint)
    data = args.data or (get_task(trained).default_data if trained in TASKS else "digits")
    splits = load_data(data, args.test_fraction)
    _check_finite_weights(model, args.checkpoint)
    ds = BankAndQueries(splits.train, splits.test, ImageTransform.for_model(model))
    evaluator = RepresentationEvaluator(len(splits.classes), args.knn_k, args.knn_temperature, probe=args.linear_probe)
    loader = DataLoader(ds, args.batch_size, collate_fn=collate_features)
    r = evaluate(model, loader, evaluator, device, progress=True)
    print(printable(f"{args.checkpoint} on {data}: frozen features of {r.bank} reference / {r.count} test images"))
    if args.knn:
        print(f"k-NN top-1 {r.knn_top1:.4f}  (k={r.k}, temperature {r.temperature}, cosine, weighted votes)")
    if args.linear_probe:
        print(f"linear-probe top-1 {r.probe_top1:.4f}  (logistic regression on standardised features)")
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
