"""The one wall-clock timer of kdistill's speed measurements (``kdistill compare`` and ``kdistill compress``):
untimed warm-up calls, then the median of repeated samples.

A sample is a block of consecutive calls, as many as make it last at least ``MIN_SAMPLE_S`` (one call when a call
takes that long already), and its value is the block's seconds per call. A call of a few microseconds timed alone is
mostly the timer's and the interpreter's overhead and its jitter. Measured on 2 CPU cores shared with a training
job, five repeats each of the batch-1 latency on ONNX Runtime of six patchify CNNs (8 to 32 filters, a dense layer
of 16 or 32) relative to a 150 us CNN teacher: timed one call at a time they read 0.105-0.223x, out of order (8
filters with 32 units: 0.105-0.127; 24 filters with 16 units: 0.173-0.223, above 32 filters with 32 units at
0.119-0.142); timed in 1 ms blocks they read 0.079-0.134x, in the order of their size (8 filters: 0.079-0.088; 32:
0.111-0.125) but for one repeat at 0.021 (the teacher's 2 threads losing a core to the job).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from kdistill.errors import ConfigError

TimedCall = Callable[[], object]  # one call of what is timed, e.g. a forward pass on a fixed batch

MIN_SAMPLE_S = 1e-3  # the shortest timed sample: faster calls are timed in blocks
MAX_CALLS_PER_SAMPLE = 10_000


def check_counts(repeats: int, warmup: int) -> None:
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"timing needs at least 1 repeat and warmup >= 0, got repeats={repeats}, warmup={warmup}")


def seconds(call: TimedCall, number: int = 1) -> float:
    """Wall time of ``number`` consecutive ``call()``s, per call."""
    start = time.perf_counter()
    for _ in range(number):
        call()
    return (time.perf_counter() - start) / number


def calls_per_sample(call: TimedCall, min_seconds: float = MIN_SAMPLE_S) -> int:
    """How many consecutive calls make a sample of at least ``min_seconds``: doubled from 1 until the fastest of three
    blocks lasts that long (``timeit``'s autorange, made robust to a block slowed by other load; call it after the
    warm-up)."""
    number = 1
    while number < MAX_CALLS_PER_SAMPLE and min(seconds(call, number) for _ in range(3)) * number < min_seconds:
        number *= 2
    return min(number, MAX_CALLS_PER_SAMPLE)


def median_seconds(call: TimedCall, repeats: int, warmup: int, min_sample_s: float = MIN_SAMPLE_S) -> float:
    """Median seconds per ``call()`` over ``repeats`` samples (blocks of calls lasting at least ``min_sample_s``)
    after ``warmup`` untimed calls."""
    check_counts(repeats, warmup)
    for _ in range(warmup):
        call()
    number = calls_per_sample(call, min_sample_s)
    return statistics.median(seconds(call, number) for _ in range(repeats))
