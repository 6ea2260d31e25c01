"""Run report: report.md with the config, final metrics, per-class accuracy, and PNG plots."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from vitlab.engine.evaluate import EvalResult


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(metrics: list[dict], path: Path) -> None:
    plt = _plt()
    epochs = [m["epoch"] for m in metrics]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, [m["train_loss"] for m in metrics], label="train")
    ax_loss.plot(epochs, [m["val_loss"] for m in metrics], label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, [m["train_acc"] for m in metrics], label="train")
    ax_acc.plot(epochs, [m["val_acc"] for m in metrics], label="test")
    if any("val_acc_ema" in m for m in metrics):
        ax_acc.plot(epochs, [m.get("val_acc_ema", math.nan) for m in metrics], label="test (EMA)")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy", title="accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(result: EvalResult, classes: list[str], path: Path) -> None:
    plt = _plt()
    K = len(classes)
    size = min(12, 3 + 0.4 * K)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(result.confusion, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    if K <= 30:
        ax.set_xticks(range(K), classes, rotation=90 if K > 10 else 0)
        ax.set_yticks(range(K), classes)
        peak = max(max(row) for row in result.confusion) or 1
        for i, row in enumerate(result.confusion):
            for j, v in enumerate(row):
                if v:
                    ax.text(j, i, v, ha="center", va="center", fontsize=8, color="white" if v > peak / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion matrix (top-1 {result.top1:.4f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, cfg, metrics: list[dict], result: EvalResult, classes: list[str], info: dict) -> Path:
    plot_curves(metrics, out / "curves.png")
    plot_confusion(result, classes, out / "confusion.png")
    lines = [
        f"# Run report: {cfg.model} on {cfg.data}",
        "",
        "## Final metrics (test split)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| top-1 accuracy | {result.top1:.4f} |",
        f"| top-5 accuracy | {result.top5:.4f} |",
        f"| loss | {result.loss:.4f} |",
        f"| test images | {result.count} |",
    ]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    lines += ["", "![loss and accuracy](curves.png)", "", "![confusion matrix](confusion.png)", ""]
    lines += ["## Per-class accuracy", "", "| class | accuracy |", "|---|---|"]
    lines += [f"| {c} | {a:.4f} |" for c, a in zip(classes, result.per_class, strict=True)]
    lines += ["", "## Configuration", "", "| field | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in dataclasses.asdict(cfg).items()]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
