"""What ``kdistill compress`` writes: every candidate as a table (``compress.md`` / ``.csv``) and the accuracy
against the budget's primary quantity as a plot (``compress.png``: teacher, budget line and Pareto front marked)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from kdistill.compress.budget import Budget
from kdistill.compress.search import Candidate
from kdistill.report.tables import markdown_table

COLUMNS = ["candidate", "architecture", "settings", "params", "flops", "primary", "within budget", "epochs",
           "val acc %", "front", "stopped"]  # fmt: skip


def _settings(candidate: Candidate) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in candidate.params.items())


def rows(candidates: list[Candidate], primary: Any) -> list[list[str]]:
    """One row per candidate: trained ones by validation accuracy, then the ones never trained."""
    ordered = sorted(candidates, key=lambda c: (c.val_acc is None, -(c.val_acc or 0.0), c.measured.get("params", 0)))
    return [
        [
            c.candidate,
            f"{c.family} {c.knobs}",
            _settings(c),
            f"{c.measured.get('params', 0):,.0f}",
            f"{c.measured.get('flops', 0):,.0f}",
            "-" if math.isnan(primary(c)) else f"{primary(c):.3g}",
            "no" if c.misses else "yes",
            str(c.epochs) if c.epochs else "-",
            f"{c.val_acc:.2f}" if c.val_acc is not None else "-",
            "*" if c.front else "",
            c.status,
        ]
        for c in ordered
    ]


def write_tables(out_dir: Path, candidates: list[Candidate], primary: Any, header: str) -> str:
    table = rows(candidates, primary)
    text = header + "\n\n" + markdown_table(COLUMNS, table) + "\n"
    (out_dir / "compress.md").write_text(text)
    with open(out_dir / "compress.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(table)
    return text


ZOOM_POINTS = 8.0  # the plot shows accuracies down to this far below the best (lower ones are counted in the legend)


def plot(
    path: Path,
    candidates: list[Candidate],
    primary: Any,
    budget: Budget,
    teacher: tuple[float, float | None],
    final: dict[str, Any] | None,
) -> None:
    """Validation accuracy (each candidate at its furthest rung, the marker growing with its epochs) against the
    primary quantity, the Pareto front joined; the architectures screened out over the budget as crosses along the
    bottom (measured, never trained); ``teacher`` is its (primary quantity, validation accuracy)."""
    limit = budget.primary
    figure = Figure(figsize=(7.5, 5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    trained = [c for c in candidates if c.val_acc is not None]
    teacher_x, teacher_val = teacher
    best = max([c.val_acc or 0.0 for c in trained] + [teacher_val or 0.0])
    low = best - ZOOM_POINTS
    below = sum(1 for c in trained if (c.val_acc or 0.0) < low)
    label = "trained candidates" + (f" ({below} below {low:.0f}% not shown)" if below else "")
    x, y = [primary(c) for c in trained], [c.val_acc or 0.0 for c in trained]
    axes.scatter(x, y, s=[8 + 2 * c.epochs for c in trained], c="tab:blue", alpha=0.7, label=label)
    front = sorted((c for c in trained if c.front), key=primary)
    if front:
        axes.plot([primary(c) for c in front], [c.val_acc or 0.0 for c in front], "-o", c="tab:orange", ms=6,
                  label=f"Pareto front ({len(front)})")  # fmt: skip
    screened = [primary(c) for c in candidates if c.val_acc is None and c.misses and not math.isnan(primary(c))]
    if screened:
        axes.scatter(screened, [low + 0.3] * len(screened), marker="x", c="tab:gray", s=20,
                     label=f"screened out over the budget ({len(screened)})")  # fmt: skip
    if teacher_val is not None:
        axes.scatter([teacher_x], [teacher_val], marker="*", s=160, c="tab:red", label=f"teacher ({teacher_val:.2f}%)")
    axes.axvline(limit.value, color="tab:red", ls="--", lw=1, label=f"budget: {limit.describe()}")
    if final is not None and final.get("test_acc_mean") is not None:
        axes.set_title(
            f"final student: test {final['test_acc_mean']:.2f} ± {final['test_acc_std']:.2f}% "
            f"({'within' if final['meets_budget'] else 'MISSES'} the budget on its artefact)",
            fontsize=10,
        )
    unit = "x the teacher's" if limit.relative else {"latency": "ms", "size": "bytes"}.get(limit.quantity, "")
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(ScalarFormatter())
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_ylim(low, best + 1)
    axes.set_xlabel(f"{limit.key} ({unit}), log scale")
    axes.set_ylabel("validation accuracy % (furthest rung)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
