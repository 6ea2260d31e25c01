"""Run report: report.md assembled from sections (markdown + PNG figures); the engine adds the shared ones.

The engine writes the title, the final metrics, the training curves and the configuration; each task adds its own
sections (classification: confusion matrix and per-class accuracy). Figures are drawn on `matplotlib.figure.Figure`
with the Agg canvas, so writing a report changes no process-wide matplotlib state (no pyplot, no backend switch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vitlab.errors import CheckpointError
from vitlab.weights.io import atomic_write


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)  # markdown
    figures: dict[str, Figure] = field(default_factory=dict)  # PNG file name -> figure, shown after the lines


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl, one per epoch; [] when absent.

    A torn last line (a crash mid-append: the epoch's checkpoint was never written, so that epoch runs again) is
    dropped; any other line that is not a JSON object with an integer "epoch" is an error naming the file and line.
    """
    if not path.is_file():
        return []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    rows = []
    numbered = [(i, line) for i, line in enumerate(lines, start=1) if line.strip()]
    for k, (i, line) in enumerate(numbered):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not (isinstance(row, dict) and isinstance(row.get("epoch"), int)):
            if k == len(numbered) - 1 and row is None:
                break  # torn by a crash while it was appended
            raise CheckpointError(f"{path}: line {i} is not a metrics row (a JSON object with an integer epoch)")
        rows.append(row)
    return rows


def table(header: tuple[str, str], rows: list[tuple]) -> list[str]:
    return [f"| {header[0]} | {header[1]} |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)]


def curves_section(
    metrics: list[dict], primary: str, primary_label: str, extra: dict[str, str] | None = None
) -> Section:
    """Loss (train and test) and the primary metric per epoch; the EMA model's metric where it was kept; `extra`
    metrics (name -> label) beside the primary. Test metrics evaluated every few epochs (--eval-every) are drawn at
    the epochs that have them, with markers."""
    fig = new_figure(10, 3.8)
    ax_loss, ax_metric = fig.subplots(1, 2)

    def plot(ax, key: str, label: str) -> None:
        rows = [m for m in metrics if key in m]
        if rows:
            marker = "o" if len(rows) < len(metrics) else None
            ax.plot([m["epoch"] for m in rows], [m[key] for m in rows], marker=marker, ms=3, label=label)

    plot(ax_loss, "train_loss", "train")
    plot(ax_loss, "val_loss", "test")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    test = f"test {primary_label}" if extra else "test"  # told apart from the extra curves on the same axes
    curves = [(f"train_{primary}", "train"), (f"val_{primary}", test), (f"val_{primary}_ema", f"{test} (EMA)")]
    curves += [(f"val_{k}", f"test {label}") for k, label in (extra or {}).items()]
    for key, label in curves:
        plot(ax_metric, key, label)
    ax_metric.set(xlabel="epoch", ylabel=primary_label, title=primary_label)
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
        ax.legend()
    return Section("Training curves", figures={"curves.png": fig})


def write_report(out: Path, title: str, summary: list[tuple], sections: list[Section], config: dict) -> Path:
    """report.md in `out` with the figures of every section beside it; returns its path."""
    lines = [f"# {title}", "", "## Final metrics (test split)", "", *table(("metric", "value"), summary), ""]
    for section in sections:
        lines += [f"## {section.title}", "", *section.lines]
        for name, fig in section.figures.items():
            save_figure(fig, out / name)
            lines += ["", f"![{section.title.lower()}]({name})"]
        lines.append("")
    lines += ["## Configuration", "", *table(("field", "value"), list(_flatten(config))), ""]
    path = out / "report.md"
    atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(lines)))
    return path


def _flatten(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v
