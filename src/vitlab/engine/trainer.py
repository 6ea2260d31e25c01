"""The training loop: config -> data -> model -> method -> AdamW + warm-up/cosine -> evaluation -> run directory.

Run directory: config.json, metrics.jsonl (one line per epoch), checkpoint.safetensors + train_state.safetensors +
state.json (every epoch, atomically), report.md with curves.png and confusion.png at the end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from vitlab.data import ImageTransform, TransformedDataset, load_data
from vitlab.engine.config import TrainConfig
from vitlab.engine.distributed import DistContext, all_reduce_sum, barrier, init_distributed, shutdown
from vitlab.engine.ema import ModelEma
from vitlab.engine.evaluate import EvalResult, evaluate
from vitlab.engine.mixup import mix_batch
from vitlab.engine.optim import build_optimizer, warmup_cosine
from vitlab.engine.report import read_metrics, write_report
from vitlab.engine.sharding import full_state, shard_model
from vitlab.engine.state import STATE_JSON, load_run_state, save_run_state
from vitlab.errors import CheckpointError, ConfigError
from vitlab.factory import create_model, load_checkpoint
from vitlab.methods import Distillation, Supervised
from vitlab.weights import checkpoint_model_name
from vitlab.weights.io import atomic_write

log = logging.getLogger(__name__)

# Fields a resumed run may change; everything else comes from the run's config.json.
RESUME_MUTABLE = {"resume", "stop_after", "workers", "device", "fsdp"}  # checkpoints do not depend on fsdp


@dataclass
class TrainResult:
    out: Path
    final: EvalResult | None  # None when the run stopped early (--stop-after) before its last epoch
    metrics: list[dict]
    seconds: float
    is_main: bool = True  # False on the other ranks of a torchrun job (they write and report nothing)


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


def _check(cfg: TrainConfig) -> None:
    positive = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "accum_steps": cfg.accum_steps}
    for k, v in positive.items():
        if v < 1:
            raise ConfigError(f"--{k.replace('_', '-')} must be >= 1, got {v}")
    if cfg.lr <= 0:
        raise ConfigError(f"--lr must be > 0, got {cfg.lr}")
    if not 0 < cfg.test_fraction < 1:
        raise ConfigError(f"--test-fraction must be in (0, 1), got {cfg.test_fraction}")
    if cfg.unfreeze_epoch is not None and not cfg.freeze_backbone:
        raise ConfigError("--unfreeze-epoch needs --freeze-backbone")


def _seed_epoch(seed: int, epoch: int, loader_gen: torch.Generator, rank: int) -> np.random.Generator:
    """All randomness of an epoch derives from (seed, epoch, rank): a resumed run replays it exactly."""
    s = seed * 100_003 + epoch
    torch.manual_seed(s + 1_000_003 * rank)  # augmentation and dropout differ between ranks
    loader_gen.manual_seed(s)  # the shuffle does not (DistributedSampler splits one permutation)
    return np.random.default_rng([seed, epoch, rank])


def build_teacher(cfg: TrainConfig, device: torch.device) -> nn.Module:
    name = cfg.teacher_model or checkpoint_model_name(cfg.teacher)
    if name is None:
        raise ConfigError(
            f"--teacher {cfg.teacher}: not a vitlab checkpoint; give its architecture with --teacher-model"
        )
    if cfg.teacher_model is None:
        return load_checkpoint(cfg.teacher).to(device)
    return create_model(name, pretrained=cfg.teacher).to(device)


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    heads = tuple(f"{h}." for h in model.get_classifier_names())
    for name, p in model.named_parameters():
        p.requires_grad_(trainable or name.startswith(heads))


def train(cfg: TrainConfig) -> TrainResult:
    """Train in this process, or as one rank of a `torchrun` job (then only rank 0 writes and logs)."""
    ctx = init_distributed(cfg.device)
    try:
        return _train(cfg, ctx)
    finally:
        shutdown(ctx)


def _train(cfg: TrainConfig, ctx: DistContext) -> TrainResult:
    t_start = time.perf_counter()
    out = Path(cfg.out)
    if cfg.resume:
        saved = out / "config.json"
        if not saved.is_file():
            raise CheckpointError(f"--resume: {saved} not found; nothing to resume in {out}")
        fields = json.loads(saved.read_text())
        cfg = TrainConfig(**{**fields, **{k: getattr(cfg, k) for k in RESUME_MUTABLE}})
    elif (out / STATE_JSON).exists() or (out / "config.json").exists():
        raise ConfigError(f"--out {out} already holds a run; pass --resume to continue it or choose another --out")
    _check(cfg)
    barrier(ctx)  # every rank has checked --out before rank 0 writes into it
    device = resolve_device(cfg.device, ctx)
    if not ctx.is_main:
        logging.getLogger("vitlab").setLevel(logging.WARNING)
    if cfg.fsdp:
        if not ctx.enabled:
            raise ConfigError("--fsdp shards across the processes of a torchrun job: torchrun --nproc-per-node N ...")
        for flag, on in (("--ema", cfg.ema), ("--freeze-backbone", cfg.freeze_backbone)):
            if on:
                raise ConfigError(f"{flag} is not supported with --fsdp; train without --fsdp (DDP) to use it")

    # Everything that can fail on bad input happens before the run directory is touched.
    torch.manual_seed(cfg.seed)
    splits = load_data(cfg.data, cfg.test_fraction)
    num_classes = len(splits.classes)
    overrides = {} if cfg.drop_path is None else {"drop_path_rate": cfg.drop_path}
    model = create_model(
        cfg.model, pretrained=cfg.pretrained, num_classes=num_classes, img_size=cfg.img_size, **overrides
    )
    model.cfg.labels = list(splits.classes)
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    model.to(device)
    if cfg.fsdp:  # before the optimizer, which must see the sharded parameters
        units = shard_model(model, device)
        log.info("FSDP: %d sharded units over %d ranks", units, ctx.world_size)
    mcfg = model.cfg
    natural = splits.natural_images
    aug = not cfg.no_augment
    train_tf = ImageTransform(
        mcfg.img_size, mcfg.in_chans, mcfg.mean, mcfg.std, train=aug, hflip=natural, affine=not natural
    )
    test_tf = ImageTransform(mcfg.img_size, mcfg.in_chans, mcfg.mean, mcfg.std, train=False)
    train_set, test_set = TransformedDataset(splits.train, train_tf), TransformedDataset(splits.test, test_tf)
    train_set[0], test_set[0]  # channel / size problems surface here, not mid-epoch  # noqa: B018
    loader_gen = torch.Generator()
    sampler = None
    if ctx.enabled:  # --batch-size is per process; the global batch is world_size times larger
        sampler = DistributedSampler(train_set, ctx.world_size, ctx.rank, shuffle=True, seed=cfg.seed)
    train_loader = DataLoader(
        train_set, cfg.batch_size, shuffle=sampler is None, sampler=sampler,
        drop_last=len(train_set) > cfg.batch_size * ctx.world_size, num_workers=cfg.workers, generator=loader_gen,
    )  # fmt: skip
    test_loader = DataLoader(test_set, max(cfg.batch_size, 256), num_workers=cfg.workers)

    if cfg.teacher:
        method = Distillation(build_teacher(cfg, device), cfg.distill, cfg.alpha, cfg.tau, cfg.label_smoothing)
    else:
        method = Supervised(cfg.label_smoothing)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.accum_steps)
    total = steps_per_epoch * cfg.epochs
    schedule = warmup_cosine(total, int(cfg.warmup_epochs * steps_per_epoch), cfg.lr, cfg.min_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    ema = ModelEma(model, cfg.ema_decay) if cfg.ema else None
    # The method calls the DDP wrapper (gradients averaged across ranks); the bare model is saved and evaluated.
    # A frozen backbone has parameters without gradients, which DDP must be told to expect.
    step_model = model
    if ctx.enabled and not cfg.fsdp:
        step_model = DistributedDataParallel(model, find_unused_parameters=cfg.freeze_backbone)

    start_epoch = 1
    if cfg.resume:
        state = load_run_state(
            out, model=model, optimizer=optimizer, scheduler=scheduler, ema_model=ema.module if ema else None,
            sharded=cfg.fsdp,
        )  # fmt: skip
        start_epoch = state["epoch"] + 1
        if ctx.is_main:
            kept = [m for m in read_metrics(out / "metrics.jsonl") if m["epoch"] <= state["epoch"]]
            _write_metrics(out, kept)
        log.info("resuming %s at epoch %d of %d", out, start_epoch, cfg.epochs)
    elif ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))

    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "%s: %s params, %d classes, %d train / %d test images, device %s",
        cfg.model, f"{n_params:,}", num_classes, len(train_set), len(test_set), device,
    )  # fmt: skip
    result: EvalResult | None = None
    for epochs_run, epoch in enumerate(range(start_epoch, cfg.epochs + 1), start=1):
        rng = _seed_epoch(cfg.seed, epoch, loader_gen, ctx.rank)
        if sampler is not None:
            sampler.set_epoch(epoch)
        if cfg.freeze_backbone:
            set_backbone_trainable(model, cfg.unfreeze_epoch is not None and epoch >= cfg.unfreeze_epoch)
        stats = train_one_epoch(
            step_model, method, train_loader, optimizer, scheduler, ema, cfg, device, num_classes, rng, epoch, ctx
        )
        result = evaluate(model, test_loader, num_classes, device, cfg.bf16)
        row = {"epoch": epoch, **stats, "val_loss": result.loss, "val_acc": result.top1, "val_top5": result.top5}
        if ema is not None:
            ema_result = evaluate(ema.module, test_loader, num_classes, device, cfg.bf16)
            row["val_acc_ema"] = ema_result.top1
        gathered = full_state(model, optimizer) if cfg.fsdp else None  # a collective: every rank takes part
        if ctx.is_main:  # checkpoints are written once, by rank 0
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            save_run_state(
                out, epoch=epoch, model=model, optimizer=optimizer, scheduler=scheduler,
                ema_model=ema.module if ema else None, extra={"seed": cfg.seed, "metrics": row}, gathered=gathered,
            )  # fmt: skip
        barrier(ctx)
        log.info(
            "epoch %d/%d  train loss %.4f acc %.4f  test loss %.4f acc %.4f top5 %.4f  %.0f img/s",
            epoch, cfg.epochs, stats["train_loss"], stats["train_acc"], result.loss, result.top1, result.top5,
            stats["img_per_s"],
        )  # fmt: skip
        if cfg.stop_after is not None and epochs_run >= cfg.stop_after and epoch < cfg.epochs:
            log.info("stopping after %d epoch(s) as asked; continue with --resume", epochs_run)
            return TrainResult(out, None, read_metrics(out / "metrics.jsonl"), time.perf_counter() - t_start)
    if result is None:  # resumed a run that had already finished (every rank: a sharded model needs them all)
        result = evaluate(model, test_loader, num_classes, device, cfg.bf16)
    if not ctx.is_main:
        return TrainResult(out, result, [], time.perf_counter() - t_start, is_main=False)

    metrics = read_metrics(out / "metrics.jsonl")
    seconds = time.perf_counter() - t_start
    info = {"parameters": f"{n_params:,}", "epochs": cfg.epochs, "wall time (this invocation)": f"{seconds:.1f} s"}
    if ema is not None:
        info["top-1 (EMA weights)"] = f"{evaluate(ema.module, test_loader, num_classes, device, cfg.bf16).top1:.4f}"
    write_report(out, cfg, metrics, result, list(splits.classes), info)
    (out / "final_metrics.json").write_text(json.dumps({**result.summary(), "per_class": result.per_class}, indent=2))
    return TrainResult(out, result, metrics, seconds)


def _write_metrics(out: Path, rows: list[dict]) -> None:
    atomic_write(out / "metrics.jsonl", lambda tmp: Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in rows)))


def train_one_epoch(
    model: nn.Module,
    method,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    ema: ModelEma | None,
    cfg: TrainConfig,
    device: torch.device,
    num_classes: int,
    rng: np.random.Generator,
    epoch: int,
    ctx: DistContext | None = None,
) -> dict:
    from tqdm.auto import tqdm

    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    t0 = time.perf_counter()
    quiet = ctx is not None and not ctx.is_main
    bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, unit="batch", disable=True if quiet else None)
    optimizer.zero_grad(set_to_none=True)
    n_batches = len(loader)
    for i, (images, labels) in enumerate(bar):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        target = labels
        if cfg.mixup > 0 or cfg.cutmix > 0:
            images, target = mix_batch(images, labels, num_classes, cfg.mixup, cfg.cutmix, cfg.label_smoothing, rng)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            loss, logits = method(model, images, target)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"epoch {epoch}, batch {i}: loss is {loss.item()} (try a lower --lr)")
        (loss / cfg.accum_steps).backward()
        if (i + 1) % cfg.accum_steps == 0 or i + 1 == n_batches:
            if cfg.clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if ema is not None:
                ema.update(model)
        B = labels.shape[0]
        total_loss += loss.item() * B
        correct += (logits.argmax(-1) == labels).sum().item()
        seen += B
        rate = seen / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}", img_s=f"{rate:.0f}")
    elapsed = time.perf_counter() - t0
    if ctx is not None and ctx.enabled:  # metrics over all ranks' samples
        total_loss, correct, seen = all_reduce_sum([total_loss, correct, seen], ctx, device)
    return {
        "train_loss": total_loss / max(seen, 1),
        "train_acc": correct / max(seen, 1),
        "lr": optimizer.param_groups[0]["lr"],
        "img_per_s": seen / elapsed,
        "epoch_seconds": elapsed,
    }
