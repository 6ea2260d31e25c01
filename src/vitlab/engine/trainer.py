"""The task-agnostic training loop: config -> task data -> model -> method -> AdamW + warm-up/cosine -> evaluator
-> run directory.

`train` reads like the data flow: resolve the config (a resumed run takes its saved one), build everything that can
fail on bad input before the run directory is touched (`build_run`), start or resume (`start_run`), fit epoch by
epoch (`fit`), then write the report (`finish`). The task (`vitlab.engine.tasks`) supplies the data, the method that
turns a batch into unweighted losses, the evaluator with its primary metric, and the report sections.

Run directory: config.json, metrics.jsonl (one line per epoch), checkpoint.safetensors + train_state.safetensors +
state.json (every epoch, committed as one: `vitlab.engine.rundir`), checkpoint_best.safetensors (best primary metric
so far), report.md with its PNG figures at the end. One training holds the directory's lock at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from vitlab.data import DataSplits
from vitlab.engine.config import TrainConfig, flag, resolve_run_defaults
from vitlab.engine.distributed import DistContext, all_reduce_sum, barrier, init_distributed, shutdown
from vitlab.engine.ema import ModelEma
from vitlab.engine.evaluators import EvalResult, Evaluator, evaluate
from vitlab.engine.optim import build_optimizer, warmup_cosine
from vitlab.engine.report import curves_section, read_metrics, write_report
from vitlab.engine.rundir import RunLock, check_out, clear_run, has_completed_epoch, is_run
from vitlab.engine.sharding import full_state, shard_model
from vitlab.engine.state import BEST_FILE, load_run_state, save_run_state
from vitlab.engine.tasks import TASKS, Task, get_task
from vitlab.errors import CheckpointError, ConfigError, TrainingDiverged
from vitlab.factory import create_model
from vitlab.methods import Method, weighted_loss
from vitlab.registry import get_entry, list_models
from vitlab.weights.io import atomic_write

log = logging.getLogger(__name__)

# Fields a resumed run may change; everything else comes from the run's config.json.
# What --resume takes from this invocation; every other field is the saved run's. `out` too: a copied run directory
# continues where it now is. A field given with another value than the saved one is refused (`changed_on_resume`).
RESUME_MUTABLE = {"resume", "stop_after", "workers", "device", "fsdp", "overwrite", "out", "eval_every"}  # not fsdp


@dataclass
class TrainResult:
    out: Path
    final: EvalResult | None  # None when the run stopped early (--stop-after) before its last epoch
    metrics: list[dict]
    seconds: float
    is_main: bool = True  # False on the other ranks of a torchrun job (they write and report nothing)
    evaluator: Evaluator | None = None  # names the metrics of `final` (primary metric, display labels)


@dataclass
class Run:
    """Everything one training run builds, handed from step to step of `train`."""

    cfg: TrainConfig
    task: Task
    ctx: DistContext
    device: torch.device
    splits: DataSplits
    model: nn.Module  # the bare model: saved, evaluated, averaged by EMA
    step_model: nn.Module  # what the method's step calls: the method's train module, DDP-wrapped under torchrun
    method: Method
    evaluator: Evaluator
    train_loader: DataLoader
    test_loader: DataLoader
    sampler: DistributedSampler | None
    loader_gen: torch.Generator
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: ModelEma | None

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)


def resolve_device(name: str, ctx: DistContext | None = None) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", ctx.local_rank) if ctx and ctx.enabled else torch.device("cuda")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def _seed_epoch(seed: int, epoch: int, loader_gen: torch.Generator, rank: int) -> np.random.Generator:
    """All randomness of an epoch derives from (seed, epoch, rank): a resumed run replays it exactly."""
    s = seed * 100_003 + epoch
    torch.manual_seed(s + 1_000_003 * rank)  # augmentation and dropout differ between ranks
    loader_gen.manual_seed(s)  # the shuffle does not (DistributedSampler splits one permutation)
    return np.random.default_rng([seed, epoch, rank])


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    heads = tuple(f"{h}." for h in model.get_classifier_names())
    for name, p in model.named_parameters():
        p.requires_grad_(trainable or name.startswith(heads))


# ----- configuration ----------------------------------------------------------------------------------------------
def config_from_json(saved: dict, source: str = "config.json") -> TrainConfig:
    """The TrainConfig a run directory's config.json describes (also the flat layout of runs before tasks).

    Anything that does not make a valid config (not an object, an unknown task or field, a value out of range) is a
    CheckpointError naming `source` and the key.
    """
    if not isinstance(saved, dict):
        raise CheckpointError(f"{source}: expected a JSON object of config fields, found {type(saved).__name__}")
    saved = dict(saved)
    task_name = saved.pop("task", None) or ("distillation" if saved.get("teacher") else "classification")
    if task_name not in TASKS:
        raise CheckpointError(f"{source}: task {task_name!r} is not one of {', '.join(TASKS)}")
    task = get_task(task_name)
    task_fields = {f.name for f in dataclasses.fields(task.config_cls)}
    task_values = saved.pop("task_cfg", None) or {}
    if not isinstance(task_values, dict):
        raise CheckpointError(f"{source}: task_cfg must be a JSON object, found {type(task_values).__name__}")
    task_values = dict(task_values)
    task_values.update({k: saved.pop(k) for k in list(saved) if k in task_fields})
    unknown = sorted(set(task_values) - task_fields)
    if unknown:
        raise CheckpointError(f"{source}: unknown task_cfg field(s) {', '.join(unknown)} for task {task.name}")
    run_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(saved) - run_fields)
    if unknown:
        raise CheckpointError(f"{source}: unknown field(s) {', '.join(unknown)}")
    try:
        return TrainConfig(**saved, task=task.name, task_cfg=task.config_cls(**task_values))
    except (ConfigError, TypeError) as e:  # the flags' own checks, or a value of the wrong type
        raise CheckpointError(f"{source}: {e}") from None


def changed_on_resume(given: TrainConfig, saved: TrainConfig) -> list[str]:
    """The fields of `given` that differ from both their default and the saved run's value, as `--lr 0.1 (run: 0.002)`.

    A value equal to its default cannot be told from a flag not given, and then the saved one holds. The epoch count
    is among them: the cosine schedule was laid out over the saved one, so a longer run would not be the same run.
    """

    def diff(obj, ref, cls) -> list[str]:
        out = []
        for f in dataclasses.fields(cls):
            if f.name in RESUME_MUTABLE or f.name == "task_cfg" or not f.metadata.get("cli", True):
                continue
            new, old = getattr(obj, f.name), getattr(ref, f.name)
            if new != f.default and new != old:
                out.append(f"{flag(f.name)} {new} (run: {old})")
        return out

    changed = diff(given, saved, TrainConfig)
    tcfg = given.task_cfg
    if not changed and tcfg is not None and type(tcfg) is type(saved.task_cfg):
        changed = diff(tcfg, saved.task_cfg, type(tcfg))
    return changed


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """The config this invocation runs: a resumed run's saved one (with RESUME_MUTABLE from `cfg`), task defaults in.

    Refuses an --out this run must not write to (`rundir.check_out`); nothing is written here.
    """
    out = Path(cfg.out)
    check_out(out, cfg.resume, cfg.overwrite)
    if cfg.resume:
        saved = out / "config.json"
        try:
            fields = json.loads(saved.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"--resume: {saved} is not valid JSON ({e})") from None
        saved_cfg = config_from_json(fields, source=str(saved))
        changed = changed_on_resume(cfg, saved_cfg)
        if changed:
            raise ConfigError(
                f"--resume continues {out} as it was started; {'; '.join(changed)}. Drop the flag, or start a new run "
                "(another --out, or --overwrite)"
            )
        cfg = dataclasses.replace(saved_cfg, **{k: getattr(cfg, k) for k in RESUME_MUTABLE})
    task = get_task(cfg.task)
    cfg = resolve_run_defaults(cfg, task.run_defaults_for(cfg))  # a resumed run's saved values are all set already
    tcfg = task.config_cls() if cfg.task_cfg is None else cfg.task_cfg
    if not isinstance(tcfg, task.config_cls):
        raise ConfigError(f"task_cfg is a {type(tcfg).__name__}; --task {task.name} takes a {task.config_cls.__name__}")
    return dataclasses.replace(
        cfg, data=cfg.data or task.default_data, model=cfg.model or task.default_model, task_cfg=tcfg
    )


# ----- building a run ---------------------------------------------------------------------------------------------
def build_model(cfg: TrainConfig, task: Task, splits: DataSplits, device: torch.device, ctx: DistContext) -> nn.Module:
    kind = get_entry(cfg.model).kind
    if kind != task.model_kind:
        models = ", ".join(list_models(kind=task.model_kind)[:4])
        raise ConfigError(
            f"--model {cfg.model} is a {kind}; --task {task.name} trains a {task.model_kind} ({models}, ...)"
        )
    overrides = {} if cfg.drop_path is None else {"drop_path_rate": cfg.drop_path}
    overrides.update(task.model_kwargs(splits, cfg.task_cfg))
    model = create_model(cfg.model, pretrained=cfg.pretrained, img_size=cfg.img_size, **overrides)
    task.prepare_model(model, cfg.task_cfg)
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    model = task.wrap_model(model, cfg.task_cfg)
    model.to(device)
    if cfg.fsdp:  # before the optimizer, which must see the sharded parameters
        units = shard_model(model, device)
        log.info("FSDP: %d sharded units over %d ranks", units, ctx.world_size)
    return model


def build_loaders(
    cfg: TrainConfig, task: Task, splits: DataSplits, model: nn.Module, ctx: DistContext
) -> tuple[DataLoader, DataLoader, DistributedSampler | None, torch.Generator]:
    train_set, test_set = task.datasets(splits, model, not cfg.no_augment, cfg.task_cfg)
    train_set[0], test_set[0]  # channel / size problems surface here, not mid-epoch  # noqa: B018
    loader_gen = torch.Generator()
    sampler = None
    if ctx.enabled:  # --batch-size is per process; the global batch is world_size times larger
        sampler = DistributedSampler(train_set, ctx.world_size, ctx.rank, shuffle=True, seed=cfg.seed)
    train_loader = DataLoader(
        train_set, cfg.batch_size, shuffle=sampler is None, sampler=sampler, collate_fn=task.collate,
        drop_last=len(train_set) > cfg.batch_size * ctx.world_size, num_workers=cfg.workers, generator=loader_gen,
    )  # fmt: skip
    test_loader = DataLoader(test_set, max(cfg.batch_size, 256), num_workers=cfg.workers, collate_fn=task.collate)
    return train_loader, test_loader, sampler, loader_gen


def build_run(cfg: TrainConfig, ctx: DistContext) -> Run:
    """Everything that can fail on bad input (data, model, teacher, flags) happens here, before any write."""
    task = get_task(cfg.task)
    device = resolve_device(cfg.device, ctx)
    if cfg.fsdp:
        if not task.supports_fsdp:
            raise ConfigError(f"--fsdp is not supported by --task {task.name}; train without --fsdp (DDP)")
        if not ctx.enabled:
            raise ConfigError("--fsdp shards across the processes of a torchrun job: torchrun --nproc-per-node N ...")
        for flag, on in (("--ema", cfg.ema), ("--freeze-backbone", cfg.freeze_backbone)):
            if on:
                raise ConfigError(f"{flag} is not supported with --fsdp; train without --fsdp (DDP) to use it")
    torch.manual_seed(cfg.seed)
    splits = task.load_data(cfg.data, cfg.test_fraction, cfg.task_cfg)
    model = build_model(cfg, task, splits, device, ctx)
    train_loader, test_loader, sampler, loader_gen = build_loaders(cfg, task, splits, model, ctx)
    method = task.build_method(cfg.task_cfg, splits, device)
    optimizer = build_optimizer(
        model, cfg.lr, cfg.weight_decay, task.lr_multipliers(model, cfg.task_cfg, cfg.lr), betas=task.adam_betas
    )
    steps_per_epoch = math.ceil(len(train_loader) / cfg.accum_steps)
    schedule = warmup_cosine(steps_per_epoch * cfg.epochs, int(cfg.warmup_epochs * steps_per_epoch), cfg.lr, cfg.min_lr)
    # The method's step calls the DDP wrapper (gradients averaged across ranks); the bare model is saved and
    # evaluated. A frozen backbone has parameters without gradients, which DDP must be told to expect.
    step_model = method.train_module(model)
    if ctx.enabled and not cfg.fsdp:
        step_model = DistributedDataParallel(step_model, find_unused_parameters=cfg.freeze_backbone)
    return Run(
        cfg=cfg, task=task, ctx=ctx, device=device, splits=splits, model=model, step_model=step_model, method=method,
        evaluator=task.build_evaluator(splits, cfg.task_cfg), train_loader=train_loader, test_loader=test_loader,
        sampler=sampler, loader_gen=loader_gen, optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
        ema=ModelEma(model, cfg.ema_decay) if cfg.ema else None,
    )  # fmt: skip


def start_run(run: Run) -> tuple[int, dict | None]:
    """(first epoch to run, best primary metric so far): resumed from the run directory, or a fresh config.json."""
    out, ctx = run.out, run.ctx
    if not run.cfg.resume or not has_completed_epoch(out):
        if run.cfg.resume:
            log.info("%s: no epoch was completed; starting the run again", out)
        if ctx.is_main:
            if is_run(out):  # --overwrite, or a run killed before its first epoch ended
                clear_run(out)
            out.mkdir(parents=True, exist_ok=True)
            atomic_write(out / "config.json", lambda tmp: Path(tmp).write_text(_config_json(run.cfg)))
        return 1, None
    state = load_run_state(
        out, model=run.model, optimizer=run.optimizer, scheduler=run.scheduler,
        ema_model=run.ema.module if run.ema else None, sharded=run.cfg.fsdp,
    )  # fmt: skip
    if ctx.is_main:
        kept = [m for m in read_metrics(out / "metrics.jsonl") if m["epoch"] <= state["epoch"]]
        _write_metrics(out, kept)
    log.info("resuming %s at epoch %d of %d", out, state["epoch"] + 1, run.cfg.epochs)
    return state["epoch"] + 1, state.get("best")


def _config_json(cfg: TrainConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2)


# ----- training ---------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> TrainResult:
    """Train in this process, or as one rank of a `torchrun` job (then only rank 0 writes and logs)."""
    ctx = init_distributed(cfg.device)
    quiet = logging.getLogger("vitlab").level if not ctx.is_main else None
    if quiet is not None:  # the other ranks log warnings only, for this run
        logging.getLogger("vitlab").setLevel(logging.WARNING)
    try:
        t_start = time.perf_counter()
        cfg = resolve_config(cfg)
        barrier(ctx)  # every rank has checked --out before rank 0 writes into it
        run = build_run(cfg, ctx)
        with RunLock(run.out) if ctx.is_main else contextlib.nullcontext():
            if ctx.is_main:
                check_out(run.out, cfg.resume, cfg.overwrite)  # again, under the lock: a run may have ended meanwhile
            start_epoch, best = start_run(run)
            result = fit(run, start_epoch, best)
            if result is None:
                metrics = read_metrics(run.out / "metrics.jsonl")
                return TrainResult(run.out, None, metrics, time.perf_counter() - t_start)
            return finish(run, result, t_start)
    finally:
        if quiet is not None:
            logging.getLogger("vitlab").setLevel(quiet)
        shutdown(ctx)


def fit(run: Run, start_epoch: int, best: dict | None) -> EvalResult | None:
    """Epochs start_epoch..epochs: train, evaluate, checkpoint. None when --stop-after ends this invocation early."""
    cfg, ctx = run.cfg, run.ctx
    n_params = sum(p.numel() for p in run.model.parameters())
    log.info(
        "%s (%s): %s params, %d train / %d test samples, device %s", cfg.model, cfg.task, f"{n_params:,}",
        len(run.train_loader.dataset), len(run.test_loader.dataset), run.device,
    )  # fmt: skip
    result = None
    for epochs_run, epoch in enumerate(range(start_epoch, cfg.epochs + 1), start=1):
        rng = _seed_epoch(cfg.seed, epoch, run.loader_gen, ctx.rank)
        if run.sampler is not None:
            run.sampler.set_epoch(epoch)
        if cfg.freeze_backbone:
            set_backbone_trainable(run.model, cfg.unfreeze_epoch is not None and epoch >= cfg.unfreeze_epoch)
        row = {"epoch": epoch, **train_one_epoch(run, epoch, rng)}
        improved = False
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:  # epochs between have no val_ metrics
            result = evaluate(run.model, run.test_loader, run.evaluator, run.device, cfg.bf16)
            row.update({f"val_{k}": v for k, v in result.metrics.items()})
            primary = run.evaluator.primary
            if run.ema is not None:
                ema_result = evaluate(run.ema.module, run.test_loader, run.evaluator, run.device, cfg.bf16)
                row[f"val_{primary}_ema"] = ema_result.metrics[primary]
            improved = run.evaluator.better(result.metrics[primary], None if best is None else best["value"])
            if improved:
                best = {"epoch": epoch, "metric": primary, "value": result.metrics[primary]}
        save_epoch(run, epoch, row, best, improved)
        log.info("epoch %d/%d  %s", epoch, cfg.epochs, _epoch_line(row))
        if cfg.stop_after is not None and epochs_run >= cfg.stop_after and epoch < cfg.epochs:
            log.info("stopping after %d epoch(s) as asked; continue with --resume", epochs_run)
            return None
    if result is None:  # resumed a run that had already finished, or stopped between evaluations (every rank)
        result = evaluate(run.model, run.test_loader, run.evaluator, run.device, cfg.bf16)
    return result


def _epoch_line(row: dict) -> str:
    """The epoch's log line: train and test metrics (per-layer auxiliary terms, `loss_ce_3`, only in metrics.jsonl)."""
    aux = re.compile(r"_\d+$")
    train = " ".join(f"{k[6:]} {v:.4f}" for k, v in row.items() if k.startswith("train_") and not aux.search(k))
    test = " ".join(f"{k[4:]} {v:.4f}" for k, v in row.items() if k.startswith("val_"))
    test = f"test {test}  " if test else ""  # --eval-every: an epoch without evaluation
    return f"train {train}  {test}{row['img_per_s']:.0f} samples/s"


def save_epoch(run: Run, epoch: int, row: dict, best: dict | None, improved: bool) -> None:
    """metrics.jsonl + the epoch's checkpoint (and the best one when the primary metric improved); rank 0 writes."""
    out, ctx = run.out, run.ctx
    gathered = full_state(run.model, run.optimizer) if run.cfg.fsdp else None  # a collective: every rank takes part
    if ctx.is_main:
        try:
            _save_epoch_files(run, epoch, row, best, improved, gathered)
        except (OSError, SafetensorError) as e:  # disk full, quota, a vanished directory: the last epoch is kept
            raise CheckpointError(
                f"saving epoch {epoch} in {out} failed ({getattr(e, 'strerror', None) or e}); the run keeps its last "
                "completed epoch: free the space and continue with --resume"
            ) from None
    barrier(ctx)


def _save_epoch_files(run: Run, epoch: int, row: dict, best: dict | None, improved: bool, gathered) -> None:
    out = run.out
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    save_run_state(
        out, epoch=epoch, model=run.model, optimizer=run.optimizer, scheduler=run.scheduler,
        ema_model=run.ema.module if run.ema else None, gathered=gathered, task=run.task.name,
        extra={"seed": run.cfg.seed, "metrics": row, "best": best}, best=improved,
    )  # fmt: skip


def train_one_epoch(run: Run, epoch: int, rng: np.random.Generator) -> dict:
    from tqdm.auto import tqdm

    cfg, ctx, method, device = run.cfg, run.ctx, run.method, run.device
    run.step_model.train()
    sums: dict[str, float] = defaultdict(float)
    seen = 0
    t0 = time.perf_counter()
    bar = tqdm(run.train_loader, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, unit="batch",
               disable=True if not ctx.is_main else None)  # fmt: skip
    run.optimizer.zero_grad(set_to_none=True)
    n_batches = len(run.train_loader)
    method.start_epoch(epoch, cfg.epochs, math.ceil(n_batches / cfg.accum_steps))
    for i, batch in enumerate(bar):
        batch = method.augment(batch.to(device), rng)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            out = method.step(run.step_model, batch)
        loss = weighted_loss(out.losses, method.loss_weights)
        if not torch.isfinite(loss):
            kept = f"{cfg.out} keeps epoch {epoch - 1}" if epoch > 1 else "no epoch completed"
            raise TrainingDiverged(
                f"epoch {epoch}, batch {i}: the loss is {loss.item()} (training diverged); {kept}. "
                "Train again with a lower --lr (--overwrite)"
            )
        (loss / cfg.accum_steps).backward()
        if (i + 1) % cfg.accum_steps == 0 or i + 1 == n_batches:
            optimizer_step(run)
        B = len(batch)
        sums["loss"] += loss.item() * B
        if len(out.losses) > 1:  # each term as well, unweighted
            for k, v in out.losses.items():
                sums[k if k.startswith("loss") else f"loss_{k}"] += v.item() * B
        for k, v in run.evaluator.batch_stats(out.outputs, batch).items():
            sums[k] += v
        seen += B
        bar.set_postfix(loss=f"{sums['loss'] / seen:.4f}", samples_s=f"{seen / (time.perf_counter() - t0):.0f}")
    elapsed = time.perf_counter() - t0
    names = list(sums)
    if ctx.enabled:  # metrics over all ranks' samples
        *values, seen = all_reduce_sum([sums[k] for k in names] + [seen], ctx, device)
        sums = dict(zip(names, values, strict=True))
    stats = {f"train_{k}": sums[k] / max(seen, 1) for k in names}
    return {**stats, "lr": run.optimizer.param_groups[0]["lr"], "img_per_s": seen / elapsed, "epoch_seconds": elapsed}


def optimizer_step(run: Run) -> None:
    if run.cfg.clip_grad:
        nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.clip_grad)
    run.method.before_optimizer_step(run.model)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    run.method.after_optimizer_step(run.model)
    if run.ema is not None:
        run.ema.update(run.model)


# ----- the end of a run -------------------------------------------------------------------------------------------
def finish(run: Run, result: EvalResult, t_start: float) -> TrainResult:
    """report.md and final_metrics.json (rank 0)."""
    cfg, out, evaluator = run.cfg, run.out, run.evaluator
    if not run.ctx.is_main:
        return TrainResult(out, result, [], time.perf_counter() - t_start, is_main=False)
    metrics = read_metrics(out / "metrics.jsonl")
    seconds = time.perf_counter() - t_start
    primary = evaluator.primary
    summary = [(evaluator.label(k), f"{v:.4f}") for k, v in result.metrics.items()]
    if run.ema is not None:
        ema_value = evaluate(run.ema.module, run.test_loader, evaluator, run.device, cfg.bf16).metrics[primary]
        summary.append((f"{evaluator.label(primary)} (EMA weights)", f"{ema_value:.4f}"))
    scored = [m for m in metrics if f"val_{primary}" in m]  # --eval-every: the evaluated epochs
    best = max(scored, key=lambda m: m[f"val_{primary}"] * (1 if evaluator.higher_is_better else -1), default=None)
    if best is not None:
        summary.append((f"best {evaluator.label(primary)} ({BEST_FILE})", f"{best[f'val_{primary}']:.4f} "
                        f"at epoch {best['epoch']}"))  # fmt: skip
    summary += [
        ("test samples", result.count),
        ("parameters", f"{sum(p.numel() for p in run.model.parameters()):,}"),
        ("epochs", cfg.epochs),
        ("wall time (this invocation)", f"{seconds:.1f} s"),
    ]
    sections = [
        curves_section(
            metrics,
            primary,
            evaluator.label(primary),
            {k: evaluator.label(k) for k in getattr(evaluator, "curve_metrics", ())},
        ),  # fmt: skip
        *run.task.report_sections(result, run.splits),
        *run.task.history_sections(metrics),
    ]
    title = f"Run report: {cfg.model} on {cfg.data} ({run.task.name})"
    write_report(out, title, summary, sections, json.loads(_config_json(cfg)))
    atomic_write(out / "final_metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(result.details(), indent=2)))
    return TrainResult(out, result, metrics, seconds, evaluator=evaluator)


def _write_metrics(out: Path, rows: list[dict]) -> None:
    atomic_write(out / "metrics.jsonl", lambda tmp: Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in rows)))
