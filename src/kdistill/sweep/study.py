"""The sweep's shared state: an Optuna study in SQLite (the sweep directory's ``study.db``) or any database URL.

Trials are claimed atomically (a row lock on PostgreSQL, plus a file lock around SQLite, whose readers take
no lock), so several worker processes, or several machines on one PostgreSQL study, never run a point twice.
A trial records who runs it (host, pid, heartbeat); a trial whose process is gone is marked failed and its
point queued again, so the next worker continues its runs from their last checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdistill.config import Config, to_dict
from kdistill.contracts import ConfigError
from kdistill.runtime.storage import claim_lock_in, open_storage, redacted
from kdistill.sweep.space import Param

if TYPE_CHECKING:
    import optuna

SPEC_ATTR = "kdistill.spec"
POINT_ATTR = "kdistill.point"  # the point's run-name stem: the same point always has the same runs
VALUES_ATTR = "kdistill.values"  # the point's values, JSON
OWNER_ATTRS = ("kdistill.host", "kdistill.pid", "kdistill.heartbeat")
MESSAGE_ATTR = "kdistill.message"
ABANDONED_ATTR = "kdistill.abandoned"  # failed because its process died or was stopped: queued again
DUPLICATE_ATTR = "kdistill.duplicate"  # claimed while its point was already done (a set-up race): not run
RUNS_ATTR = "kdistill.runs"  # the run directories of a finished point, one per seed
OBJECTIVE_STD_ATTR = "kdistill.objective_std"  # the objective's sample std over the seeds


@dataclass
class SweepSpec:
    """One sweep: the base config, what varies, how many seeds per point and how points are chosen."""

    config: Config
    params: list[Param]
    out_dir: Path
    trials: int = 1  # seeds per point; the objective is their mean validation accuracy
    search: bool = False  # Optuna TPE over the ranges instead of the grid
    n_trials: int = 10  # points to evaluate in a search
    prune: bool = False  # stop hopeless points early on per-epoch validation accuracy (median rule)
    prune_startup: int = 2  # points finished before pruning starts
    objective: str = "final_val_acc"  # summary key, averaged over the seeds: final_val_acc | best_val_acc
    storage: str | None = None  # database URL; None: sqlite:///<out_dir>/study.db
    workers: int = 1
    stale_minutes: float = 30.0  # a running trial on another host without a heartbeat this long is abandoned
    extra: dict[str, Any] = field(default_factory=dict)  # set by presets (tune), recorded in the spec

    @property
    def swept_keys(self) -> list[str]:
        """Every config key the sweep sets, in the order given (keys that vary together each count)."""
        return [key for param in self.params for key in param.keys]

    @property
    def runs_dir(self) -> Path:
        return self.out_dir / "runs"

    @property
    def study_name(self) -> str:
        """The sweep directory's name: machines sharing one database give the same --out (or the same name)."""
        return self.out_dir.resolve().name

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out_dir / 'study.db').resolve()}"

    def identity(self) -> dict[str, Any]:
        """What makes two sweep commands the same sweep (workers, storage and staleness may differ)."""
        base = to_dict(self.config)
        for key in ("output_dir", "track"):
            base.pop(key, None)
        base["train"].pop("progress", None)
        return {
            "config": base,
            "params": [param.describe() for param in self.params],
            "trials": self.trials,
            "search": self.search,
            "n_trials": self.n_trials if self.search else None,
            "prune": self.prune,
            "objective": self.objective,
            **self.extra,
        }


def default_sweep_dir(config: Config, suffix: str = "") -> Path:
    """``<output_dir>/sweeps/<name><suffix>``: where a sweep of ``config`` lives without ``--out``."""
    return Path(config.output_dir) / "sweeps" / f"{config.name}{suffix}"


def claim_lock(spec: SweepSpec) -> contextlib.AbstractContextManager[None]:
    """Serialises claiming among the processes of this machine (SQLite needs it; it costs nothing elsewhere)."""
    return claim_lock_in(spec.out_dir)


def sampler_and_pruner(spec: SweepSpec, worker: int) -> tuple[Any, Any]:
    import optuna

    sampler = optuna.samplers.TPESampler(seed=spec.config.seed + 1000 * worker)
    if not spec.prune:
        return sampler, optuna.pruners.NopPruner()
    return sampler, optuna.pruners.MedianPruner(n_startup_trials=spec.prune_startup, n_warmup_steps=1)


def load_study(spec: SweepSpec, worker: int = 0) -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    """The sweep's study (created on first use) and its storage; refuses a study that holds another sweep."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # kdistill reports the trials itself
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    storage = open_storage(spec.storage_url)
    sampler, pruner = sampler_and_pruner(spec, worker)
    study = optuna.create_study(
        study_name=spec.study_name,
        storage=storage,
        direction="maximize",
        load_if_exists=True,
        sampler=sampler,
        pruner=pruner,
    )
    identity = json.dumps(spec.identity(), sort_keys=True)
    saved = study.user_attrs.get(SPEC_ATTR)
    if saved is None:
        study.set_user_attr(SPEC_ATTR, identity)
    elif saved != identity:
        old, new = json.loads(saved), json.loads(identity)
        differences = [
            key for key in sorted(set(old) | set(new)) if json.dumps(old.get(key)) != json.dumps(new.get(key))
        ]
        raise ConfigError(
            f"study {spec.study_name!r} in {redacted(spec.storage_url)} holds a different sweep (differs in: "
            f"{', '.join(differences)}). Repeat that sweep's command to continue it, or start a new one with "
            "another --out (or --set name=...)"
        )
    return study, storage


def owner_attrs() -> dict[str, Any]:
    return dict(zip(OWNER_ATTRS, (socket.gethostname(), os.getpid(), time.time())))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_abandoned(trial: optuna.trial.FrozenTrial, stale_minutes: float) -> bool:
    """A running trial whose process is gone (this host) or has sent no heartbeat for ``stale_minutes``."""
    host, pid, heartbeat = (trial.user_attrs.get(key) for key in OWNER_ATTRS)
    if heartbeat is None:
        return trial.datetime_start is None or time.time() - trial.datetime_start.timestamp() > 60 * stale_minutes
    if host == socket.gethostname() and isinstance(pid, int) and not _process_alive(pid):
        return True
    return time.time() - float(heartbeat) > 60 * stale_minutes
