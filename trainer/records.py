"""Run records: metrics.csv, the training-curve plot and summary.json."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

logger = logging.getLogger(__name__)

CURVES = {
    "loss": ("train_loss", "val_loss"),
    "accuracy": (
        "val_shoelace_acc",
        "train_shoelace_acc",
        "val_category_acc",
    ),
}


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    """Rewrite the per-epoch table; blank cells are figures that were not computed."""
    columns: list[str] = []
    for entry in history:
        columns += [key for key in entry if key not in columns]
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for entry in history:
            writer.writerow({key: _cell(entry.get(key)) for key in columns})
    partial.replace(path)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def plot_curves(path: Path, history: list[dict], best_epoch: int) -> None:
    """Draw losses and accuracies per epoch with the best epoch marked, as a PNG."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(figure)
    for position, (title, keys) in enumerate(CURVES.items(), start=1):
        axes = figure.add_subplot(1, 2, position)
        for key in keys:
            points = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                axes.plot(xs, ys, marker="o", label=key)
        axes.axvline(
            best_epoch, color="grey", linestyle="--", label=f"best epoch {best_epoch}"
        )
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title(title)
        axes.legend(fontsize="small")
    figure.savefig(path, dpi=100)


def write_summary(path: Path, summary: dict) -> None:
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def read_summary(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))
