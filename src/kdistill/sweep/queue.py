"""Points in the study: queued once, claimed by one worker each, re-queued when their process died."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kdistill.sweep.space import Param, point_name
from kdistill.sweep.study import (
    ABANDONED_ATTR,
    DUPLICATE_ATTR,
    POINT_ATTR,
    VALUES_ATTR,
    SweepSpec,
    claim_lock,
    is_abandoned,
    owner_attrs,
)

if TYPE_CHECKING:
    import optuna


MAX_CLAIM_ATTEMPTS = 20


@dataclass
class Claimed:
    """A trial this worker now runs: its point's values and run-name stem."""

    trial: optuna.trial.Trial
    values: dict[str, Any]
    name: str


def not_counted(trial: optuna.trial.FrozenTrial) -> bool:
    """Failed only because its process died (queued again) or because it was a duplicate claim."""
    return bool(trial.user_attrs.get(ABANDONED_ATTR) or trial.user_attrs.get(DUPLICATE_ATTR))


def taken_points(study: optuna.Study, exclude: int | None = None, running_only: bool = False) -> set[str]:
    """Points that are done, running or queued in a trial that counts (``running_only``: being run now)."""
    import optuna

    running = optuna.trial.TrialState.RUNNING
    return {
        trial.user_attrs[POINT_ATTR]
        for trial in study.get_trials(deepcopy=False)
        if POINT_ATTR in trial.user_attrs
        and not not_counted(trial)
        and trial.number != exclude
        and (trial.state == running or not running_only)
    }


def enqueue_missing(study: optuna.Study, points: list[tuple[str, dict[str, Any]]]) -> int:
    """Queue every grid point no trial holds yet (idempotent: a restarted sweep queues nothing twice)."""
    taken = taken_points(study)
    missing = [(name, values) for name, values in points if name not in taken]
    for name, values in missing:
        study.enqueue_trial({}, user_attrs={POINT_ATTR: name, VALUES_ATTR: json.dumps(values)})
    return len(missing)


def requeue(study: optuna.Study, trial: optuna.trial.BaseTrial, **attrs: Any) -> None:
    """Queue ``trial``'s point again (its params, point name and values), with ``attrs`` added."""
    kept = {key: trial.user_attrs[key] for key in (POINT_ATTR, VALUES_ATTR) if key in trial.user_attrs}
    study.enqueue_trial(trial.params, user_attrs={**kept, **attrs})


def recover_abandoned(
    study: optuna.Study, storage: optuna.storages.RDBStorage, stale_minutes: float, log: Callable[[str], None]
) -> int:
    """Mark running trials whose process is gone as failed (abandoned) and queue their points again."""
    import optuna

    study_id = storage.get_study_id_from_name(study.study_name)
    recovered = 0
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if not is_abandoned(trial, stale_minutes):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            storage.set_trial_user_attr(trial_id, ABANDONED_ATTR, True)
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # its worker finished it meanwhile
        requeue(study, trial, **{"kdistill.retry_of": trial.number})
        point = trial.user_attrs.get(POINT_ATTR, "no point yet")
        log(f"sweep: trial {trial.number} ({point}) was abandoned; queued again")
        recovered += 1
    return recovered


def _pop_waiting(study: optuna.Study, storage: optuna.storages.RDBStorage) -> optuna.trial.Trial | None:
    """Take one queued trial: the storage's row-locked state change lets only one process have it."""
    import optuna

    study_id = storage.get_study_id_from_name(study.study_name)
    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        try:
            if storage.set_trial_state_values(trial_id, optuna.trial.TrialState.RUNNING):
                return optuna.trial.Trial(study, trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def suggest(trial: optuna.trial.Trial, params: list[Param]) -> dict[str, Any]:
    """The point's values from the sampler (TPE), or the fixed values of a queued trial."""
    values: dict[str, Any] = {}
    for param in params:
        if param.kind in ("loguniform", "uniform"):
            values[param.key] = trial.suggest_float(param.key, param.low, param.high, log=param.kind == "loguniform")
        elif param.kind == "int":
            values[param.key] = trial.suggest_int(param.key, int(param.low), int(param.high))
        elif all(value is None or isinstance(value, (bool, int, float, str)) for value in param.values):
            values[param.key] = trial.suggest_categorical(param.key, list(param.values))
        else:  # lists and mappings (and keys that vary together) are stored as their JSON text
            chosen = json.loads(trial.suggest_categorical(param.key, [json.dumps(v) for v in param.values]))
            values.update(param.assignments(chosen))
    return values


def _counted_trials(study: optuna.Study) -> int:
    return sum(not not_counted(trial) for trial in study.get_trials(deepcopy=False))


def claim(spec: SweepSpec, study: optuna.Study, storage: optuna.storages.RDBStorage) -> Claimed | None:
    """The next point for this worker, or None when the sweep has nothing left to start."""
    import optuna

    with claim_lock(spec):
        for _ in range(MAX_CLAIM_ATTEMPTS):
            trial = _pop_waiting(study, storage)
            if trial is None and spec.search and _counted_trials(study) < spec.n_trials:
                trial = study.ask()
            if trial is None:
                return None
            attrs = study.get_trials(deepcopy=False)[trial.number].user_attrs
            if spec.search:
                values = suggest(trial, spec.params)
                name = attrs.get(POINT_ATTR) or point_name(spec.config.name, values, readable=False)
            else:
                values, name = json.loads(attrs[VALUES_ATTR]), attrs[POINT_ATTR]
            # a grid point runs once; a search may propose a finished point again (its runs are read back, not
            # retrained), but never one that another worker is running now
            if name in taken_points(study, exclude=trial.number, running_only=spec.search):
                trial.set_user_attr(DUPLICATE_ATTR, True)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            for key, value in {POINT_ATTR: name, VALUES_ATTR: json.dumps(values), **owner_attrs()}.items():
                trial.set_user_attr(key, value)
            return Claimed(trial, values, name)
    return None  # only proposals that other workers are running: leave the rest to them
