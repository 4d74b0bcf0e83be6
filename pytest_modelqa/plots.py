"""Images for the HTML report: matplotlib plots and Pillow thumbnails as data URIs.

Every image is returned as a ``data:`` URI, so a report embeds it inline and stays
whole when copied alone or written with ``--self-contained-html``. Plots are drawn on
a ``matplotlib.figure.Figure`` with the Agg canvas, never through ``pyplot``, so the
report neither needs a display nor changes the process's global backend.
"""

from __future__ import annotations

import base64
import io
import numbers
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

THUMBNAIL_SIZE = 96  # px, the longer side of a gallery thumbnail
PLOT_DPI = 100


def _png_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=PLOT_DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def top_k_plot(curves: dict[str, list[float]]) -> str:
    """Draw top-K accuracy against K, one line per model, as a PNG data URI.

    `curves` maps a model label to its accuracies for K = 1, 2, ... in order.
    """
    figure = _new_figure(6, 3.6)
    axes = figure.add_subplot()
    for label, curve in curves.items():
        ks = range(1, len(curve) + 1)
        axes.plot(ks, [100 * value for value in curve], marker="o", label=label)
    longest = max((len(curve) for curve in curves.values()), default=1)
    axes.set_xticks(range(1, longest + 1))
    axes.set_ylim(0, 100)
    axes.set_xlabel("K")
    axes.set_ylabel("top-K accuracy (%)")
    axes.set_title("Top-K accuracy")
    axes.grid(alpha=0.3)
    if curves:
        axes.legend(fontsize="small")
    return _png_uri(figure)


def benchmark_plot(accuracies: dict[str, dict[str, float]]) -> str:
    """Draw benchmark accuracy as grouped bars, as a PNG data URI.

    `accuracies` maps a benchmark name to ``{model label: accuracy}``, accuracies as
    fractions. Each benchmark is a group with one bar per model.
    """
    benchmarks = list(accuracies)
    labels: list[str] = []
    for values in accuracies.values():
        labels += [label for label in values if label not in labels]
    figure = _new_figure(
        max(4.5, 2.5 + 0.6 * len(benchmarks) * max(1, len(labels))), 3.6
    )
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(labels))
    for position, label in enumerate(labels):
        xs = [
            i + (position - (len(labels) - 1) / 2) * width
            for i in range(len(benchmarks))
        ]
        ys = [100 * accuracies[name].get(label, float("nan")) for name in benchmarks]
        bars = axes.bar(xs, ys, width=width, label=label)
        axes.bar_label(bars, fmt="%.1f", fontsize="x-small")
    axes.set_xticks(range(len(benchmarks)), benchmarks)
    axes.set_ylim(0, 105)
    axes.set_ylabel("accuracy (%)")
    axes.set_title("Benchmark accuracy")
    if labels:
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png_uri(figure)


def history_keys(history: list[dict]) -> list[str]:
    """Return the numeric keys of per-epoch records, in first-seen order, less epoch."""
    keys: list[str] = []
    for entry in history:
        for key, value in entry.items():
            if key == "epoch" or key in keys:
                continue
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                keys.append(key)
    return keys


def _history_panels(keys: list[str], history: list[dict]) -> dict[str, list[str]]:
    """Group keys into panels: losses, figures within [0, 1], and everything else."""
    panels: dict[str, list[str]] = {"loss": [], "rates and accuracies": [], "other": []}
    for key in keys:
        values = [e[key] for e in history if isinstance(e.get(key), numbers.Real)]
        if "loss" in key:
            panels["loss"].append(key)
        elif all(0.0 <= value <= 1.0 for value in values):
            panels["rates and accuracies"].append(key)
        else:
            panels["other"].append(key)
    return {title: keys for title, keys in panels.items() if keys}


def _epoch(entry: dict, position: int) -> float:
    epoch = entry.get("epoch")
    return epoch if isinstance(epoch, numbers.Real) else position


def history_plot(history: list[dict], *, marks: dict[str, float]) -> str | None:
    """Draw every numeric key of a trainer history per epoch, as a PNG data URI.

    `history` is a list of per-epoch dicts. Each entry's x value is its ``epoch``, or
    its 1-based position when it has none. `marks` maps a model label to the epoch it
    was saved at, drawn as a dashed vertical line. Returns None when no key is
    numeric.
    """
    keys = history_keys(history)
    if not keys:
        return None
    panels = _history_panels(keys, history)
    figure = _new_figure(4.2 * len(panels), 3.4)
    for position, (title, panel_keys) in enumerate(panels.items(), start=1):
        axes = figure.add_subplot(1, len(panels), position)
        for key in panel_keys:
            points = [
                (_epoch(entry, index), entry[key])
                for index, entry in enumerate(history, start=1)
                if isinstance(entry.get(key), numbers.Real)
            ]
            xs, ys = zip(*points, strict=True)
            axes.plot(xs, ys, marker="o", label=key)
        for label, epoch in marks.items():
            axes.axvline(epoch, color="grey", linestyle="--", linewidth=0.8)
            axes.text(
                epoch,
                0.03,
                label,
                transform=axes.get_xaxis_transform(),
                rotation=90,
                fontsize="x-small",
                va="bottom",
                ha="right",
            )
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("epoch")
        axes.set_title(title)
        axes.legend(fontsize="x-small")
    return _png_uri(figure)


def thumbnail(path: str | Path, *, size: int = THUMBNAIL_SIZE) -> str | None:
    """Downscale an image to fit `size` px, as a JPEG data URI; None if unreadable."""
    try:
        with Image.open(path) as image:
            image.thumbnail((size, size))
            rgb = image.convert("RGB")
    # OSError covers a missing file and PIL's UnidentifiedImageError.
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
