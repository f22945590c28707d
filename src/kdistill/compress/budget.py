"""A deployment budget: limits on what a student may cost, absolute or relative to its teacher.

``--budget params=0.1x --budget latency=0.2x`` or ``--budget "params=0.1x,latency=0.2ms"``. Each limit is
``QUANTITY=VALUE``:

=============  ======================================  =========================================================
quantity       what is measured                        values
=============  ======================================  =========================================================
``params``     parameters                              ``0.1x``, ``100k``, ``1.5M``, ``50000``
``flops``      FLOPs per image (one forward pass)      ``0.25x``, ``20M``, ``1.2G``
``size``       bytes of the exported artefact          ``0.1x``, ``400kB``, ``2MB``, ``1.5MiB``
``latency``    batch-1 latency on the runtime (ms)     ``0.2x``, ``0.5ms``, ``300us``, ``0.5`` (ms)
``throughput`` images/s at a batch (a *minimum*)       ``2x``, ``5000``, ``2x@128`` (batch; default 64)
=============  ======================================  =========================================================

Every quantity but throughput is a maximum. ``Nx`` is relative to the teacher: measured against the teacher in the
same process (latency and throughput interleaved with it, so the ratio holds on a noisy shared machine), and the
output says which limits were relative. Parsing imports no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kdistill.contracts import ConfigError

QUANTITIES = {
    "params": "parameters",
    "flops": "FLOPs per image",
    "size": "artefact bytes",
    "latency": "batch-1 latency (ms)",
    "throughput": "images/s",
}
TIMED = ("latency", "throughput")  # measured on the runtime, not counted
DEFAULT_THROUGHPUT_BATCH = 64
_COUNT_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_SIZE_UNITS = {"": 1.0, "b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2.0**10, "mib": 2.0**20, "gib": 2.0**30}
_TIME_UNITS = {"": 1.0, "ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}
_NUMBER = r"(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"


@dataclass(frozen=True)
class Limit:
    """One limit: ``quantity <= value`` (``>=`` for throughput); ``value`` is a factor of the teacher's when
    ``relative``, else in the quantity's unit (parameters, FLOPs, bytes, ms, images/s)."""

    quantity: str
    value: float
    relative: bool
    batch: int = 1  # the batch throughput is measured at (1 for the other quantities)

    @property
    def is_minimum(self) -> bool:
        return self.quantity == "throughput"

    def describe(self) -> str:
        sign = ">=" if self.is_minimum else "<="
        value = f"{self.value:g}x the teacher's" if self.relative else f"{self.value:g}"
        unit = (
            ""
            if self.relative
            else {"latency": " ms", "size": " bytes", "throughput": " images/s"}.get(self.quantity, "")
        )
        at = f" at batch {self.batch}" if self.quantity == "throughput" else ""
        return f"{self.quantity}{at} {sign} {value}{unit}"

    def bound(self, teacher: dict[str, float] | None) -> float:
        """The limit in the quantity's unit (a relative one times the teacher's measurement)."""
        if not self.relative:
            return self.value
        if teacher is None or self.key not in teacher:
            raise ConfigError(f"budget {self.describe()}: the teacher's {self.key} was not measured")
        return self.value * teacher[self.key]

    @property
    def key(self) -> str:
        """The name of the measurement it reads: the quantity, with the batch for throughput."""
        return f"throughput@{self.batch}" if self.quantity == "throughput" else self.quantity

    def check(self, measured: dict[str, float], teacher: dict[str, float] | None) -> tuple[bool, float, float]:
        """(met, the measured value, the bound); a relative timing limit reads the measured ratio to the teacher
        (``<key>_ratio``, from an interleaved measurement) when there is one."""
        value = measured[self.key]
        if self.relative and f"{self.key}_ratio" in measured:
            ratio = measured[f"{self.key}_ratio"]
            met = ratio >= self.value if self.is_minimum else ratio <= self.value
            return met, value, self.bound(teacher)
        bound = self.bound(teacher)
        return (value >= bound if self.is_minimum else value <= bound), value, bound


@dataclass(frozen=True)
class Budget:
    limits: tuple[Limit, ...]

    @property
    def relative(self) -> bool:
        return any(limit.relative for limit in self.limits)

    @property
    def timed(self) -> bool:
        return any(limit.quantity in TIMED for limit in self.limits)

    @property
    def primary(self) -> Limit:
        """The limit the search trades accuracy against (the second objective): the first timed one, else the
        first given."""
        return next((limit for limit in self.limits if limit.quantity in TIMED), self.limits[0])

    def describe(self) -> str:
        return ", ".join(limit.describe() for limit in self.limits)

    def misses(self, measured: dict[str, float], teacher: dict[str, float] | None) -> list[str]:
        """Every limit ``measured`` breaks, each with its numbers (empty: within budget)."""
        missed = []
        for limit in self.limits:
            met, value, bound = limit.check(measured, teacher)
            if not met:
                ratio = measured.get(f"{limit.key}_ratio")
                shown = f"{ratio:.3g}x the teacher's" if limit.relative and ratio is not None else _number(value)
                missed.append(f"{limit.key} {shown} (limit {limit.describe()}, i.e. {_number(bound)})")
        return missed


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _scaled(quantity: str, number: str, unit: str, units: dict[str, float]) -> float:
    factor = units.get(unit.lower())
    if factor is None:
        raise ConfigError(
            f"budget {quantity}={number}{unit}: unknown unit {unit!r}; valid: "
            + ", ".join(repr(u) for u in units if u)
            + " or a factor of the teacher's like 0.2x"
        )
    return float(number) * factor


def parse_limit(text: str) -> Limit:
    """``"latency=0.2x"`` -> ``Limit("latency", 0.2, relative=True)``; refuses unknown quantities and values."""
    quantity, sep, raw = (part.strip() for part in text.partition("="))
    if not sep or not raw:
        raise ConfigError(f"budget {text!r}: expected QUANTITY=VALUE, e.g. params=0.1x or latency=0.5ms")
    if quantity not in QUANTITIES:
        raise ConfigError(f"budget {text!r}: unknown quantity {quantity!r}; valid: {', '.join(QUANTITIES)}")
    value, _, batch_text = raw.partition("@")
    batch = 1
    if batch_text or quantity == "throughput":
        if quantity != "throughput":
            raise ConfigError(f"budget {text!r}: only throughput takes a batch (@N)")
        batch = DEFAULT_THROUGHPUT_BATCH
        if batch_text:
            if not batch_text.isdigit() or int(batch_text) < 1:
                raise ConfigError(f"budget {text!r}: the batch after @ must be a positive integer, e.g. @64")
            batch = int(batch_text)
    match = re.fullmatch(_NUMBER + r"\s*([a-zA-Zµ]*)", value.strip())
    if match is None:
        raise ConfigError(f"budget {text!r}: {value!r} is not a number with an optional unit or x")
    number, unit = match.groups()
    if unit.lower() == "x":
        limit = Limit(quantity, float(number), True, batch)
    else:
        units = {"size": _SIZE_UNITS, "latency": _TIME_UNITS}.get(quantity, _COUNT_UNITS)
        limit = Limit(quantity, _scaled(quantity, number, unit, units), False, batch)
    if not limit.value > 0:
        raise ConfigError(f"budget {text!r}: the limit must be positive")
    return limit


def parse_budget(items: list[str] | tuple[str, ...]) -> Budget:
    """``--budget`` values (each one limit or several separated by commas) -> a :class:`Budget`."""
    limits = [parse_limit(part) for item in items for part in item.split(",") if part.strip()]
    if not limits:
        raise ConfigError(
            "no budget: give at least one --budget, e.g. --budget params=0.1x --budget latency=0.2x "
            f"(quantities: {', '.join(QUANTITIES)})"
        )
    keys = [limit.key for limit in limits]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ConfigError(f"budget: {', '.join(repeated)} limited twice; give each quantity once")
    return Budget(tuple(limits))
