"""Table helpers shared by every report: mean ± sample std, Markdown tables, the trial-name convention.

Reports over run directories are built in :mod:`kdistill.report.experiments`, their plots in
:mod:`kdistill.report.plots`.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from typing import Any

TRIAL_SUFFIX = re.compile(r"-seed\d+$")  # run_trials names its runs <name>-seed<N>


def experiment_name(run_name: str) -> str:
    """A run's name without its ``-seedN`` suffix: the experiment its trials belong to."""
    return TRIAL_SUFFIX.sub("", run_name)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for a single value)."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def mean_difference(before: Sequence[float], after: Sequence[float]) -> tuple[float, float]:
    """mean(after) - mean(before) and its standard error sqrt(s_b^2 / n_b + s_a^2 / n_a) (sample stds; a side with
    one value contributes 0)."""
    (mean_before, std_before), (mean_after, std_after) = mean_std(before), mean_std(after)
    return mean_after - mean_before, (std_before**2 / len(before) + std_after**2 / len(after)) ** 0.5


def format_mean_std(values: Sequence[float], digits: int = 2) -> str:
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])
