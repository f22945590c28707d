"""What ``kdistill compress`` searches: student families with their width and depth knobs, the methods with their
key settings, and the optimiser's learning rate (a YAML file; ``configs/compress/`` ships one per input size).

.. code-block:: yaml

    families:                        # family: {knob: values}; every knob of a family must be given
      mlp: {layers: [1, 2], width: [32, 64, 96]}
      cnn: {stages: [1, 2], width: [8, 16], hidden: [0, 64], head: [flatten, avg]}
    methods:                         # method: {setting: values} (method.<setting> in the config)
      kd: {temperature: [1, 4], kd_weight: "uniform:0.5:0.95"}
    optim: {lr: "loguniform:0.01:0.2"}
    search: {min_epochs: 2, eta: 3}  # successive halving: rungs of min_epochs * eta^k epochs, top 1/eta promoted

Values are a list (a categorical choice) or a range ``int:LOW:HIGH``, ``uniform:LOW:HIGH``, ``loguniform:LOW:HIGH``.
Families and their knobs are fixed here (:data:`FAMILIES`); an unknown family, knob or method is refused with the
valid ones. Parsing imports no torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdistill.contracts import ConfigError

Knobs = dict[str, Any]


@dataclass(frozen=True)
class Family:
    """A student family: its knobs and how they become a zoo model name and kwargs."""

    knobs: tuple[str, ...]
    build: Callable[[Knobs], tuple[str, dict[str, Any]]]
    description: str


def _mlp(k: Knobs) -> tuple[str, dict[str, Any]]:
    return "mlp", {"hidden": [int(k["width"])] * int(k["layers"])}


def _cnn(k: Knobs) -> tuple[str, dict[str, Any]]:
    width = int(k["width"])
    return "cnn", {
        "channels": [width * 2**stage for stage in range(int(k["stages"]))],
        "hidden": int(k["hidden"]),
        "padding": 1,
        "batch_norm": True,
        "head": k["head"],
    }


def _patch_cnn(k: Knobs) -> tuple[str, dict[str, Any]]:
    name, kwargs = _cnn({**k, "head": "flatten"})
    return name, {**kwargs, "patch": int(k["patch"])}


def _resnet(k: Knobs) -> tuple[str, dict[str, Any]]:
    width = int(k["width"])
    return "resnet_cifar", {"depth": int(k["depth"]), "widths": [width, width, 2 * width, 4 * width]}


FAMILIES: dict[str, Family] = {
    "mlp": Family(("layers", "width"), _mlp, "MLP: `layers` hidden layers of `width` units"),
    "cnn": Family(
        ("stages", "width", "hidden", "head"),
        _cnn,
        "the simple CNN: `stages` conv-BN-ReLU-pool stages of `width`, 2x`width`, ... filters, head `flatten` "
        "(dense `hidden`, 0 for none) or `avg` (global pool + linear)",
    ),
    "patch_cnn": Family(
        ("patch", "stages", "width", "hidden"),
        _patch_cnn,
        "the simple CNN with a patchify first stage (a `patch` x `patch` conv of stride `patch`, no pool), then "
        "`stages` - 1 conv-BN-ReLU-pool stages; widths `width`, 2x`width`, ...; head flatten + dense `hidden`",
    ),
    "resnet_cifar": Family(
        ("depth", "width"), _resnet, "CIFAR ResNet of `depth` (6n+2) with filters `width`, `width`, 2x, 4x"
    ),
    "wrn": Family(
        ("depth", "widen_factor"),
        lambda k: ("wrn", {"depth": int(k["depth"]), "widen_factor": int(k["widen_factor"])}),
        "Wide ResNet of `depth` (6n+4) and `widen_factor`",
    ),
    "mobilenetv2": Family(
        ("width_mult",),
        lambda k: ("mobilenetv2", {"width_mult": float(k["width_mult"])}),
        "MobileNetV2 (CIFAR) with width multiplier `width_mult`",
    ),
    "shufflenetv2": Family(
        ("net_size",),
        lambda k: ("shufflenetv2", {"net_size": float(k["net_size"])}),
        "ShuffleNetV2 (CIFAR) of width `net_size`",
    ),
    "timm": Family(("model",), lambda k: (f"timm:{k['model']}", {}), "a timm model by name (timm installed)"),
}
RANGE_KINDS = ("int", "uniform", "loguniform")


@dataclass(frozen=True)
class Choice:
    """One searched value: categorical ``values``, or a numeric range of ``kind``."""

    name: str  # the Optuna parameter name, e.g. "mlp.width" or "kd.temperature"
    values: tuple[Any, ...] = ()
    kind: str = "values"
    low: float = math.nan
    high: float = math.nan

    def suggest(self, trial: Any) -> Any:
        if self.kind == "values":
            return trial.suggest_categorical(self.name, list(self.values))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high))
        return trial.suggest_float(self.name, self.low, self.high, log=self.kind == "loguniform")

    def grid(self) -> list[Any]:
        """Every value (a range's ends and, for int, each integer), for screening a whole family."""
        if self.kind == "values":
            return list(self.values)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1))
        return [self.low, self.high]


def _choice(where: str, name: str, spec: Any) -> Choice:
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"search space {where}: an empty list of values")
        if not all(isinstance(value, (int, float, str, bool)) for value in spec):
            raise ConfigError(f"search space {where}: values must be numbers or strings, got {spec}")
        return Choice(name, tuple(spec))
    if isinstance(spec, (int, float, str)) and not (isinstance(spec, str) and ":" in spec):
        return Choice(name, (spec,))
    if isinstance(spec, str):
        kind, *bounds = spec.split(":")
        if kind in RANGE_KINDS and len(bounds) == 2:
            try:
                low, high = float(bounds[0]), float(bounds[1])
            except ValueError:
                low = high = math.nan
            if low <= high and (kind != "loguniform" or low > 0):
                return Choice(name, kind=kind, low=low, high=high)
    raise ConfigError(
        f"search space {where}: {spec!r} is neither a list of values nor a range "
        f"({', '.join(f'{kind}:LOW:HIGH' for kind in RANGE_KINDS)}, LOW <= HIGH, loguniform LOW > 0)"
    )


@dataclass
class SearchSpace:
    families: dict[str, list[Choice]]
    methods: dict[str, list[Choice]]
    optim: list[Choice] = field(default_factory=list)
    min_epochs: int = 2
    eta: int = 3
    source: str = ""

    def sample(self, trial: Any) -> tuple[str, Knobs, str, dict[str, Any]]:
        """(family, knobs, method, settings incl. ``optim.lr``) for an Optuna trial."""
        family = trial.suggest_categorical("family", sorted(self.families))
        knobs = {c.name.split(".", 1)[1]: c.suggest(trial) for c in self.families[family]}
        method = trial.suggest_categorical("method", sorted(self.methods))
        settings = {f"method.{c.name.split('.', 1)[1]}": c.suggest(trial) for c in self.methods[method]}
        settings.update({f"optim.{c.name.split('.', 1)[1]}": c.suggest(trial) for c in self.optim})
        return family, knobs, method, settings

    def architectures(self) -> list[tuple[str, Knobs]]:
        """Every architecture of the grid of the families' knob values (ranges: their ends), for screening."""
        result: list[tuple[str, Knobs]] = []
        for family, choices in sorted(self.families.items()):
            combos: list[Knobs] = [{}]
            for choice in choices:
                knob = choice.name.split(".", 1)[1]
                combos = [{**combo, knob: value} for combo in combos for value in choice.grid()]
            result += [(family, combo) for combo in combos]
        return result

    def rungs(self, final_epochs: int) -> list[int]:
        """Epochs of each successive-halving rung: min_epochs * eta^k, below the final schedule's epochs."""
        rungs, epochs = [], self.min_epochs
        while epochs < final_epochs:
            rungs.append(epochs)
            epochs *= self.eta
        return rungs or [final_epochs]


def architecture(family: str, knobs: Knobs) -> tuple[str, dict[str, Any]]:
    """The zoo model name and kwargs of a family's knobs."""
    return FAMILIES[family].build(knobs)


def architecture_key(family: str, knobs: Knobs) -> str:
    return f"{family}:{json.dumps(knobs, sort_keys=True)}"


def load_space(path: str | Path, method_names: list[str] | None = None) -> SearchSpace:
    """Read and check a space file; ``method_names`` are the registered methods (checked when given)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search space {path}: no such file (configs/compress/ has the shipped ones)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"search space {path}: not valid YAML ({error})") from None
    return parse_space(raw, str(path), method_names)


def parse_space(raw: dict[str, Any], source: str = "", method_names: list[str] | None = None) -> SearchSpace:
    if not isinstance(raw, dict):
        raise ConfigError(f"search space {source}: expected a mapping with families, methods, optim, search")
    unknown = sorted(set(raw) - {"families", "methods", "optim", "search"})
    if unknown:
        raise ConfigError(
            f"search space {source}: unknown section(s) {unknown}; valid: families, methods, optim, search"
        )
    families: dict[str, list[Choice]] = {}
    for family, knobs in (raw.get("families") or {}).items():
        if family not in FAMILIES:
            raise ConfigError(f"search space {source}: unknown family {family!r}; valid: {', '.join(FAMILIES)}")
        knobs = knobs or {}
        wanted = FAMILIES[family].knobs
        extra, missing = sorted(set(knobs) - set(wanted)), [k for k in wanted if k not in knobs]
        if extra or missing:
            raise ConfigError(
                f"search space {source}: family {family!r} takes the knobs {', '.join(wanted)}"
                + (f"; unknown: {', '.join(extra)}" if extra else "")
                + (f"; missing: {', '.join(missing)}" if missing else "")
            )
        families[family] = [_choice(f"{family}.{k}", f"{family}.{k}", knobs[k]) for k in wanted]
    if not families:
        raise ConfigError(f"search space {source}: no families; valid: {', '.join(FAMILIES)}")
    methods: dict[str, list[Choice]] = {}
    for method, settings in (raw.get("methods") or {"kd": {}}).items():
        if method_names is not None and method not in method_names:
            raise ConfigError(f"search space {source}: unknown method {method!r}; valid: {', '.join(method_names)}")
        methods[method] = [_choice(f"{method}.{k}", f"{method}.{k}", v) for k, v in (settings or {}).items()]
    optim = [_choice(f"optim.{k}", f"optim.{k}", v) for k, v in (raw.get("optim") or {}).items()]
    search = raw.get("search") or {}
    unknown = sorted(set(search) - {"min_epochs", "eta"})
    if unknown:
        raise ConfigError(f"search space {source}: unknown search setting(s) {unknown}; valid: min_epochs, eta")
    min_epochs, eta = search.get("min_epochs", 2), search.get("eta", 3)
    if not (isinstance(min_epochs, int) and min_epochs >= 1 and isinstance(eta, int) and eta >= 2):
        raise ConfigError(f"search space {source}: search.min_epochs must be an int >= 1 and eta an int >= 2")
    return SearchSpace(families, methods, optim, min_epochs, eta, source)


SPACES_DIR = Path(__file__).resolve().parents[3] / "configs" / "compress"


def default_space_path(input_shape: tuple[int, int, int]) -> Path:
    """The shipped space for an input size: ``small`` (up to 28x28 grey or colour), ``cifar`` (32x32 and up)."""
    return SPACES_DIR / ("space_small.yaml" if input_shape[-1] <= 28 else "space_cifar.yaml")
