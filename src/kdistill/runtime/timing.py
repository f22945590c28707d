"""The one wall-clock timer of kdistill's speed measurements (``kdistill compare`` and ``kdistill compress``):
untimed warm-up calls, then the median of repeated calls."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from kdistill.errors import ConfigError

TimedCall = Callable[[], object]  # one call of what is timed, e.g. a forward pass on a fixed batch


def check_counts(repeats: int, warmup: int) -> None:
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"timing needs at least 1 repeat and warmup >= 0, got repeats={repeats}, warmup={warmup}")


def seconds(call: TimedCall) -> float:
    """Wall time of one ``call()``."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def median_seconds(call: TimedCall, repeats: int, warmup: int) -> float:
    """Median wall time of ``call()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    check_counts(repeats, warmup)
    for _ in range(warmup):
        call()
    return statistics.median(seconds(call) for _ in range(repeats))
