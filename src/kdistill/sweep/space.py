"""What a sweep varies: ``--param KEY=SPEC`` parsed, checked against the config, and turned into trial configs.

A spec is a list of YAML literals (``method.temperature=1,4,10``, ``schedule.milestones=[30,60],[40,80]``: commas
inside brackets belong to the value) or, for ``--search``, a range: ``loguniform:1e-3:1e-1``, ``uniform:0:1``,
``int:1:10`` (both ends included) or ``choice:a,b,c``. Every value is type-checked by building the config it
makes, before any trial runs. Keys that must vary together are one parameter: ``method.kd_weight,method.ce_weight=
[0.1,0.9],[0.5,0.5],[0.9,0.1]`` (each value lists one value per key; seed 002's lambda with CE weight 1 - lambda).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import yaml

from kdistill.checks import config_problems
from kdistill.config import Config, replace, to_dict
from kdistill.contracts import ConfigError

RANGE_KINDS = ("loguniform", "uniform", "int", "choice")
RESERVED_KEYS = ("name", "seed", "output_dir")  # set per trial by the sweep itself
MAX_SLUG = 80


@dataclass(frozen=True)
class Param:
    """One swept key: a list of values (grid, or ``choice`` in a search) or a numeric range (search only)."""

    key: str
    kind: str  # "values" | "loguniform" | "uniform" | "int" (a choice is "values")
    values: tuple[Any, ...] = ()
    low: float = math.nan
    high: float = math.nan

    @property
    def is_range(self) -> bool:
        return self.kind != "values"

    @property
    def keys(self) -> list[str]:
        """The config keys it sets: one, or several for values that vary together."""
        return self.key.split(",")

    def assignments(self, value: Any) -> dict[str, Any]:
        """``{key: value}``, or for keys that vary together one value per key."""
        return dict(zip(self.keys, value)) if len(self.keys) > 1 else {self.key: value}

    def describe(self) -> str:
        if self.is_range:
            return f"{self.key}={self.kind}:{self.low:g}:{self.high:g}"
        return f"{self.key}=" + ",".join(json.dumps(value) for value in self.values)


def split_values(text: str) -> list[str]:
    """``"[30,60],[40,80]"`` -> ``["[30,60]", "[40,80]"]``: commas split values only outside brackets and quotes."""
    parts, depth, quote, current = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += char
    parts.append(current)
    return [part.strip() for part in parts]


def _literal(key: str, text: str) -> Any:
    if not text:
        raise ConfigError(f"--param {key}: an empty value; give values separated by commas, e.g. {key}=1,2")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"--param {key}: {text!r} is not a YAML literal ({error})") from None


def _number(key: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--param {key}: {text!r} is not a number") from None


def parse_param(text: str) -> Param:
    """``"optim.lr=loguniform:1e-3:1e-1"`` -> ``Param("optim.lr", "loguniform", low=0.001, high=0.1)``."""
    if "=" not in text:
        raise ConfigError(f"--param {text!r}: expected KEY=VALUES, e.g. --param method.temperature=1,4,10")
    key, spec = (part.strip() for part in text.split("=", 1))
    key = ",".join(part.strip() for part in key.split(","))
    if any(part in RESERVED_KEYS for part in key.split(",")):
        raise ConfigError(f"--param {key}: the sweep sets name, seed and output_dir itself (use --trials for seeds)")
    kind, _, rest = spec.partition(":")
    if kind not in RANGE_KINDS or not rest:
        values = tuple(_literal(key, part) for part in split_values(spec))
        return Param(key, "values", values=values)
    if kind == "choice":
        return Param(key, "values", values=tuple(_literal(key, part) for part in split_values(rest)))
    if "," in key:
        raise ConfigError(f"--param {key}: keys that vary together take listed values, not a range")
    bounds = rest.split(":")
    if len(bounds) != 2:
        raise ConfigError(f"--param {key}={spec}: a range is {kind}:LOW:HIGH, e.g. {key}={kind}:1e-3:1e-1")
    low, high = (_number(key, bound) for bound in bounds)
    return Param(key, kind, low=low, high=high)


def _range_problems(param: Param) -> list[str]:
    where = f"--param {param.describe()}"
    if not param.is_range:
        problems = (
            [f"{where}: a value is repeated"] if len(set(map(json.dumps, param.values))) < len(param.values) else []
        )
        if len(param.keys) > 1 and any(not isinstance(v, list) or len(v) != len(param.keys) for v in param.values):
            problems.append(f"{where}: every value must list one value per key, e.g. [0.1,0.9]")
        return problems
    if not (math.isfinite(param.low) and math.isfinite(param.high)) or param.low >= param.high:
        return [f"{where}: an empty range; LOW must be below HIGH"]
    if param.kind == "loguniform" and param.low <= 0:
        return [f"{where}: a log-uniform range needs LOW > 0"]
    if param.kind == "int" and not (param.low.is_integer() and param.high.is_integer()):
        return [f"{where}: an int range needs whole-number ends"]
    return []


def probe_values(param: Param) -> list[Any]:
    """The values that type-check a parameter: every listed value, or both ends of a range."""
    if not param.is_range:
        return list(param.values)
    if param.kind == "int":
        return [int(param.low), int(param.high)]
    return [param.low, param.high]


def check_space(config: Config, params: list[Param], search: bool) -> None:
    """Every problem of the swept space at once, before any trial runs: unknown keys, wrong types, empty or
    inverted ranges, repeated keys, ranges without ``--search``."""
    if not params:
        raise ConfigError("a sweep needs at least one --param KEY=VALUES")
    problems: list[str] = []
    keys = [key for param in params for key in param.keys]
    problems += [f"--param {key}: given more than once" for key in sorted({k for k in keys if keys.count(k) > 1})]
    for param in params:
        if param.is_range and not search:
            problems.append(f"--param {param.describe()}: ranges need --search (a grid takes listed values)")
        range_problems = _range_problems(param)
        problems += range_problems
        if range_problems:
            continue
        for value in probe_values(param):
            try:
                probe = replace(config, [override(k, v) for k, v in param.assignments(value).items()])
            except ConfigError as error:
                problems.append(f"--param {param.key}={json.dumps(value)}: {error}")
                continue
            problems += [f"--param {param.key}={json.dumps(value)}: {p}" for p in config_problems(probe)]
    if problems:
        listing = "\n  - ".join(dict.fromkeys(problems))
        raise ConfigError(f"{len(problems)} problem(s) in the sweep, nothing was run:\n  - {listing}")


def override(key: str, value: Any) -> str:
    """``("optim.lr", 0.1)`` -> ``"optim.lr=0.1"`` (JSON, which YAML reads back exactly)."""
    return f"{key}={json.dumps(value)}"


def grid_points(params: list[Param]) -> list[dict[str, Any]]:
    """The Cartesian product of the listed values, in the order given (last key varies fastest)."""
    points: list[dict[str, Any]] = [{}]
    for param in params:
        points = [{**point, **param.assignments(value)} for point in points for value in param.values]
    return points


def config_value(config: Config, key: str) -> Any:
    """The typed value of a dotted key in ``config`` (what the run really used)."""
    node: Any = to_dict(config)
    for part in key.split("."):
        node = node[part]
    return node


def _slug_value(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else value if isinstance(value, str) else json.dumps(value)
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")


def point_name(base: str, values: dict[str, Any], readable: bool = True) -> str:
    """A run-name stem that is a function of the point's values: ``kd-temperature4-kd_weight0.5``; with
    ``readable=False`` (search points, whose floats do not shorten safely) or when too long, a hash of the values."""
    leaves = [key.split(".")[-1] for key in values]
    labels = [leaf if leaves.count(leaf) == 1 else key.replace(".", "_") for leaf, key in zip(leaves, values)]
    slug = "-".join(f"{label}{_slug_value(value)}" for label, value in zip(labels, values.values()))
    digest = hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]
    if readable and len(slug) <= MAX_SLUG:
        return f"{base}-{slug}"
    return f"{base}-p{digest}"


def rescaled_milestones(config: Config, epochs: int) -> list[str]:
    """A step schedule's decays (in epochs and in steps) at the same fractions when a sweep changes its length."""
    if config.schedule.name != "step" or epochs == config.train.epochs:
        return []
    scale = epochs / config.train.epochs
    overrides = []
    for key in ("milestones", "milestone_steps"):
        values = getattr(config.schedule, key)
        if values:
            overrides.append(override(f"schedule.{key}", sorted(max(1, round(m * scale)) for m in values)))
    return overrides


def point_overrides(config: Config, values: dict[str, Any]) -> list[str]:
    """The overrides of one point: its values, plus the milestones of a step schedule whose length is swept."""
    overrides = [override(key, value) for key, value in values.items()]
    epochs = values.get("train.epochs")
    if epochs is not None and "schedule.milestones" not in values and "schedule.milestone_steps" not in values:
        overrides += rescaled_milestones(config, int(epochs))
    return overrides
