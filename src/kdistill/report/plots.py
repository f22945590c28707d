"""PNG plots of experiments, drawn on matplotlib's Agg canvas (no pyplot state: safe to call many times in one
process, e.g. from a sweep).

Every function saves one PNG and returns a :class:`Plot` with its path and the matplotlib ``Figure``, so callers
(and tests) can read the axes, series and plotted data back:

- :func:`plot_curves`: a metric per epoch, one line per group (mean over its trials) with a ± std band
  (:func:`plot_curve_panels`: one such panel per setting, side by side);
- :func:`plot_swept`: a swept parameter against top-1 and top-5 test accuracy (seed 003's learning-rate figure);
- :func:`plot_pruning`: test accuracy against the pruning ratio, one point per group (SimKD, Figure 6);
- :func:`plot_tsne`: t-SNE maps of teacher and student features, coloured by class (SimKD, Figure S.2);
- :func:`plot_image_grid` and :func:`plot_lr`: what ``kdistill show-batch`` draws (a batch, the lr schedule).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from kdistill.report.tables import experiment_name, mean_std
from kdistill.track import read_metrics, read_summary

DPI = 120
MAX_VALUE_TICKS = 12  # a swept parameter with at most this many values gets a tick at each
METRIC_LABELS = {
    "test_acc": "test accuracy (%)",
    "test_loss": "test loss",
    "test_top5": "test top-5 accuracy (%)",
    "val_acc": "validation accuracy (%)",
    "val_loss": "validation loss",
    "train_loss": "train loss",
    "train_acc": "train accuracy (%)",
}

Trials = Sequence[Sequence[Mapping[str, Any]]]  # the metrics.jsonl records of each trial of one group


@dataclass(frozen=True)
class Plot:
    """A saved PNG and the figure drawn into it."""

    path: Path
    figure: Figure


@dataclass(frozen=True)
class Point:
    """One plotted mean with its error bars (sample std over trials)."""

    x: float
    y: float
    y_std: float = 0.0
    label: str = ""
    x_std: float = 0.0


def new_figure(width: float, height: float, panels: int = 1) -> tuple[Figure, list[Axes]]:
    """A figure on an Agg canvas with ``panels`` side-by-side axes."""
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    return figure, list(axes)


def save(figure: Figure, path: str | Path) -> Plot:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    return Plot(path, figure)


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def epoch_statistics(
    trials: Trials, metric: str, x: str = "epoch"
) -> tuple[list[int], list[float], list[float], list[int]]:
    """Values of ``x`` (``epoch`` or ``step``) where ``metric`` was logged, its mean and sample std over the trials
    there, and how many trials."""
    xs = sorted({int(r[x]) for trial in trials for r in trial if r.get(metric) is not None})
    means, stds, counts = [], [], []
    for position in xs:
        values = [r[metric] for trial in trials for r in trial if r[x] == position and r.get(metric) is not None]
        mean, std = mean_std(values)
        means.append(mean)
        stds.append(std)
        counts.append(len(values))
    return xs, means, stds, counts


X_LABELS = {"epoch": "epoch", "step": "optimizer step"}


def _draw_curves(
    axis: Axes, groups: Mapping[str, Trials], metric: str, x: str, references: Mapping[str, float] | None
) -> None:
    for label, trials in groups.items():
        xs, means, stds, counts = epoch_statistics(trials, metric, x)
        if not xs:
            continue
        (line,) = axis.plot(xs, means, marker="o", markersize=3, label=label)
        if max(counts) > 1:
            low = [m - s for m, s in zip(means, stds)]
            high = [m + s for m, s in zip(means, stds)]
            axis.fill_between(xs, low, high, alpha=0.2, color=line.get_color())
    for label, value in (references or {}).items():
        axis.axhline(value, linestyle="--", color="grey", label=f"{label} ({value:.2f})")
    axis.set_xlabel(X_LABELS.get(x, x))
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylabel(metric_label(metric))
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8)


def plot_curves(
    groups: Mapping[str, Trials],
    metric: str,
    path: str | Path,
    title: str = "",
    references: Mapping[str, float] | None = None,
    x: str = "epoch",
) -> Plot:
    """``metric`` per epoch (or ``x="step"``), one line per group (mean over its trials; band = ± sample std where
    more than one trial logged it); ``references`` draws labelled dashed horizontal lines (e.g. the teacher's)."""
    title = title or f"{metric_label(metric)} per epoch (mean ± std over trials)"
    return plot_curve_panels({title: groups}, metric, path, references, x)


def plot_curve_panels(
    panels: Mapping[str, Mapping[str, Trials]],
    metric: str,
    path: str | Path,
    references: Mapping[str, float] | None = None,
    x: str = "epoch",
) -> Plot:
    """One :func:`plot_curves` panel per entry of ``panels`` (title -> groups), side by side, each with its own x
    axis (settings of very different lengths stay readable) and the same ``references``."""
    figure, axes = new_figure(6.5 if len(panels) == 1 else 5.5 * len(panels), 4.2, len(panels))
    for axis, (title, groups) in zip(axes, panels.items()):
        _draw_curves(axis, groups, metric, x, references)
        axis.set_title(title)
    return save(figure, path)


def plot_metric(
    run_dirs: Sequence[str | Path] | Mapping[str, Sequence[str | Path]],
    metric: str,
    path: str | Path,
    title: str = "",
    references: dict[str, float] | None = None,
    x: str = "epoch",
) -> Path:
    """Plot ``metric`` per epoch (or ``x="step"``) for each experiment (runs grouped by name without ``-seedN``; mean
    over its trials, band = ± std); ``references`` draws labelled horizontal lines. ``run_dirs`` as a mapping (panel
    title -> run directories) draws one panel each. Returns the PNG's path."""
    panels = run_dirs if isinstance(run_dirs, Mapping) else {title or metric: run_dirs}
    grouped: dict[str, dict[str, list[list[dict[str, Any]]]]] = {}
    for panel, directories in panels.items():
        groups = grouped.setdefault(panel, {})
        for run_dir in directories:
            groups.setdefault(experiment_name(read_summary(run_dir)["name"]), []).append(read_metrics(run_dir))
    return plot_curve_panels(grouped, metric, path, references, x).path


def log_scale_wanted(values: Sequence[float]) -> bool:
    """A log axis for positive values spanning a factor of 10 or more (learning rates, weight decays)."""
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) and bool(values) and max(positive) / min(positive) >= 10


def _errorbar_series(axis: Axes, series: Mapping[str, Sequence[Point]]) -> None:
    for label, points in series.items():
        ordered = sorted(points, key=lambda p: p.x)
        axis.errorbar(
            [p.x for p in ordered],
            [p.y for p in ordered],
            yerr=[p.y_std for p in ordered],
            marker="o",
            capsize=3,
            label=label or None,
        )


def plot_swept(
    top1: Mapping[str, Sequence[Point]],
    top5: Mapping[str, Sequence[Point]],
    key: str,
    path: str | Path,
) -> Plot:
    """Test top-1 (left) and top-5 (right) accuracy against the swept ``key``: the mean over trials with error
    bars of one sample std, one series per value of the other grouping keys (series label; "" = the only one).
    Log x axis when the values span a factor of 10 or more. Without top-5 values only the top-1 panel is drawn."""
    panels = [("top-1", top1)] + ([("top-5", top5)] if any(top5.values()) else [])
    figure, axes = new_figure(5.0 * len(panels), 4.0, len(panels))
    xs = sorted({p.x for points in top1.values() for p in points})
    for axis, (name, series) in zip(axes, panels):
        _errorbar_series(axis, series)
        if log_scale_wanted(xs):
            axis.set_xscale("log")
            axis.xaxis.set_minor_formatter(NullFormatter())  # minor log ticks unlabelled: their labels overlap
        if len(xs) <= MAX_VALUE_TICKS:  # ticks at the swept values themselves
            axis.set_xticks(xs, [f"{x:g}" for x in xs])
        axis.set_xlabel(key)
        axis.set_ylabel(f"test {name} accuracy (%)")
        axis.set_title(f"{name} vs {key} (mean ± std over trials)")
        axis.grid(alpha=0.3)
        if any(label for label in series):
            axis.legend(fontsize=8)
    return save(figure, path)


def plot_pruning(points: Sequence[Point], path: str | Path) -> Plot:
    """Test accuracy against the pruning ratio (1 - student / teacher parameters), one labelled point per group
    with error bars of one sample std over its trials (SimKD, Figure 6)."""
    figure, (axis,) = new_figure(6.0, 4.2)
    axis.errorbar(
        [p.x for p in points],
        [p.y for p in points],
        yerr=[p.y_std for p in points],
        xerr=[p.x_std for p in points],
        fmt="o",
        capsize=3,
    )
    for point in points:
        axis.annotate(point.label, (point.x, point.y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    axis.set_xlabel("pruning ratio (1 - student / teacher parameters)")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title("accuracy vs pruning ratio (mean ± std over trials)")
    axis.grid(alpha=0.3)
    return save(figure, path)


def plot_tsne(
    maps: Mapping[str, np.ndarray],
    labels: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    title: str = "",
) -> Plot:
    """One panel per entry of ``maps`` (name -> (N, 2) t-SNE coordinates), one scatter per class (legend =
    class names), so a teacher's and a student's maps of the same images can be compared side by side."""
    figure, axes = new_figure(5.0 * len(maps), 4.6, len(maps))
    classes = sorted({int(c) for c in labels})
    colours = [f"C{i % 10}" if len(classes) <= 10 else None for i in range(len(classes))]
    for axis, (name, coordinates) in zip(axes, maps.items()):
        for colour, label in zip(colours, classes):
            chosen = coordinates[labels == label]
            axis.scatter(chosen[:, 0], chosen[:, 1], s=8, color=colour, label=class_names[label])
        axis.set_title(name)
        axis.set_xticks([])
        axis.set_yticks([])
    axes[-1].legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        figure.suptitle(title, fontsize=10)
    return save(figure, path)


def plot_image_grid(images: np.ndarray, titles: Sequence[str], grid: int, path: str | Path, title: str = "") -> Plot:
    """The first ``grid`` x ``grid`` images of (N, C, H, W) values in [0, 1] (grey for one channel), titled by
    ``titles`` (may be empty); cells without an image are left blank."""
    figure = Figure(figsize=(1.6 * grid, 1.7 * grid + 0.4))
    FigureCanvasAgg(figure)
    axes = figure.subplots(grid, grid, squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.set_axis_off()
        if index >= len(images):
            continue
        image = np.transpose(images[index], (1, 2, 0))  # (H, W, C)
        if image.shape[2] == 1:
            axis.imshow(image[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            axis.imshow(image, interpolation="nearest")
        if index < len(titles) and titles[index]:
            axis.set_title(titles[index], fontsize=7)
    if title:
        figure.suptitle(title, fontsize=9)
    return save(figure, path)


def plot_lr(lrs: Sequence[float], steps_per_epoch: int, path: str | Path, title: str = "") -> Plot:
    """The learning rate of every optimisation step, x in epochs (step / steps per epoch)."""
    figure, (axis,) = new_figure(6.0, 3.6)
    epochs = [step / steps_per_epoch for step in range(len(lrs))]
    axis.plot(epochs, list(lrs), linewidth=1.2)
    axis.set_xlabel("epoch")
    axis.set_ylabel("learning rate")
    axis.set_title(title or "learning rate per step")
    axis.grid(alpha=0.3)
    return save(figure, path)


def finite(value: Any) -> bool:
    """A real number to plot (not None, bool, NaN or infinite)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
