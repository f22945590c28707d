"""What trackers take from the run directory's records: flattened config values and the numeric fields."""

from __future__ import annotations

import math
from typing import Any


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def numeric_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a record (no booleans), without its ``epoch`` and ``step`` counters."""
    return {
        k: float(v)
        for k, v in record.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and k not in ("epoch", "step")
    }
