"""MLflow runs written through ``MlflowClient``: one per kdistill run (:class:`MLflowSink`), and a sweep's parent run
(:func:`start_parent_run`, :func:`finish_parent_run`) that the UI shows with its trials nested under it.

No fluent ``mlflow.start_run``: there is no process-wide active run, so a sweep can call ``fit`` many times in one
process and several processes can write one store. The run directory stays the record; MLflow gets a copy: the
flattened config as params, every numeric field of each epoch's record as a metric at step = epoch, the summary as
``summary.*`` metrics, and config.yaml, summary.json, metrics.jsonl and the run directory's plots as artifacts.
MLflow is imported only when one of these is used (``pip install 'kdistill[mlflow]'``).
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdistill.config import Config, to_dict
from kdistill.contracts import ConfigError, TrainingInterrupted
from kdistill.runtime.io import atomic_write_text
from kdistill.track.records import flatten, numeric_metrics

if sys.platform != "win32":
    import fcntl

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, Run, RunTag

PARENT_TAG = "mlflow.parentRunId"  # the MLflow UI nests a run under the run this tag names
RUN_ID_FILE = "mlflow_run_id"  # in the run directory: a resumed run continues this MLflow run
ARTIFACT_FILES = ("config.yaml", "summary.json", "metrics.jsonl")  # plus every *.png of the run directory
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
MISSING = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")  # MlflowException.error_code of an unknown run or experiment
MAX_KEY_LENGTH = 250  # MLflow's limit on param, metric and tag names
MAX_TAG_LENGTH = 5000  # below MLflow's tag value limit (8000)


def default_tracking_uri(output_dir: str | Path) -> str:
    """``sqlite:///<output_dir>/mlflow.db`` (absolute): the store of a run without ``track.mlflow_tracking_uri``."""
    return f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


def tracking_uri(config: Config) -> str:
    """The MLflow store a run writes to: ``track.mlflow_tracking_uri``, else :func:`default_tracking_uri`."""
    return config.track.mlflow_tracking_uri or default_tracking_uri(config.output_dir)


def run_params(config: Config) -> dict[str, Any]:
    """The flattened config, plus ``distill`` (the method's name) and ``learning_rate`` (``optim.lr``): short names
    for the two columns a runs table of a distillation sweep is read by."""
    return {**flatten(to_dict(config)), "distill": config.method.name, "learning_rate": config.optim.lr}


# --------------------------------------------------------------------------- store access


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative paths from the working directory), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0]).resolve()


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Across processes, one at a time creates a SQLite store's tables and experiments (MLflow does not lock its
    table creation): an exclusive lock on ``<database>.lock``. Other stores do their own locking."""
    path = _sqlite_path(uri)
    if path is None or sys.platform == "win32":
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def _client(uri: str) -> MlflowClient:
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise ConfigError(
            "track.mlflow needs MLflow: pip install 'kdistill[mlflow]' (or the client only: mlflow-skinny, "
            "sqlalchemy, alembic)"
        ) from None
    with _store_lock(uri):
        return MlflowClient(tracking_uri=uri)  # a new SQLite store creates its tables here


# MLflow 3's UI opens an experiment of this kind on its training-runs table (params and metrics), not the GenAI view
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def _experiment_id(client: MlflowClient, uri: str, name: str) -> str:
    """The id of experiment ``name``, created if missing (artifacts of a SQLite store go to ``mlartifacts/`` next to
    the database, not to ``./mlruns`` of whatever directory the run started in)."""
    from mlflow.exceptions import MlflowException

    with _store_lock(uri):
        found = client.get_experiment_by_name(name)
        if found is None:
            sqlite = _sqlite_path(uri)
            location = (sqlite.parent / "mlartifacts").as_uri() if sqlite is not None else None
            try:
                return str(client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS))
            except MlflowException as error:  # another process created it first (a server or shared database)
                found = client.get_experiment_by_name(name)
                if error.error_code != "RESOURCE_ALREADY_EXISTS" or found is None:
                    raise
    if found.lifecycle_stage == "deleted":
        raise ConfigError(
            f"MLflow experiment {name!r} (id {found.experiment_id}) is deleted: restore it "
            f"(mlflow experiments restore --experiment-id {found.experiment_id}) or set track.mlflow_experiment"
        )
    return str(found.experiment_id)


def _find_run(client: MlflowClient, run_id: str) -> Run | None:
    """Run ``run_id``; None where the store holds no such run (or only a deleted one)."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        if error.error_code in MISSING:
            return None
        raise
    return None if run.info.lifecycle_stage == "deleted" else run


def _reopen(client: MlflowClient, run_id: str) -> Run | None:
    """Run ``run_id``, set RUNNING again (None where the store has no such run)."""
    run = _find_run(client, run_id)
    if run is not None:
        client.update_run(run_id, status="RUNNING")
    return run


# --------------------------------------------------------------------------- entities


def _key(name: str) -> str:
    """A name MLflow accepts (letters, digits, ``_ - . / :`` and spaces; at most 250 characters)."""
    return re.sub(r"[^\w\-./: ]", "_", name)[:MAX_KEY_LENGTH]


def _params(values: dict[str, Any], known: dict[str, str] | None = None) -> list[Param]:
    """Params, values as text cut to MLflow's limit; names in ``known`` are left out (a param cannot change)."""
    from mlflow.entities import Param

    try:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH as limit
    except ImportError:  # an older MLflow: its documented limit
        limit = 500
    params = {_key(name): str(value)[:limit] for name, value in values.items()}
    return [Param(name, value) for name, value in params.items() if name not in (known or {})]


def _metrics(values: dict[str, float], step: int) -> list[Metric]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(_key(name), value, now, step) for name, value in values.items()]


def _tags(values: dict[str, Any]) -> list[RunTag]:
    from mlflow.entities import RunTag

    return [RunTag(_key(name), str(value)[:MAX_TAG_LENGTH]) for name, value in values.items()]


def _log_files(client: MlflowClient, run_id: str, paths: Iterable[Path]) -> None:
    """Upload the files (and folders) of ``paths`` that exist to the run's artifact root."""
    for path in paths:
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=path.name)
        elif path.is_file():
            client.log_artifact(run_id, str(path))


def _finite(values: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


# --------------------------------------------------------------------------- a sweep's parent run


def start_parent_run(
    tracking_uri: str,
    experiment: str,
    name: str,
    params: dict[str, Any],
    run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Start the MLflow run a sweep's trials nest under (pass its id as ``track.mlflow_parent_run_id``) and return
    its id. The experiment is created if missing; a ``run_id`` the store holds is reopened (status RUNNING again,
    params it lacks added: a param never changes), an unknown one replaced by a new run."""
    client = _client(tracking_uri)
    experiment_id = _experiment_id(client, tracking_uri, experiment)
    all_tags = {"kdistill.kind": "sweep", **(tags or {})}
    run = _reopen(client, run_id) if run_id else None
    if run is None:
        run = client.create_run(experiment_id, run_name=name, tags=all_tags)
    client.log_batch(run.info.run_id, params=_params(params, run.data.params), tags=_tags(all_tags))
    return str(run.info.run_id)


def finish_parent_run(
    tracking_uri: str, run_id: str, metrics: dict[str, float], artifacts: list[Path], status: str = "FINISHED"
) -> None:
    """End a sweep's parent run: its (finite) metrics, the files (or folders) of ``artifacts`` that exist, and
    ``status`` (FINISHED, FAILED or KILLED)."""
    if status not in TERMINAL_STATUSES:
        raise ValueError(f"status={status!r}; valid: {', '.join(TERMINAL_STATUSES)}")
    client = _client(tracking_uri)
    client.log_batch(run_id, metrics=_metrics(_finite(metrics), step=0))
    _log_files(client, run_id, artifacts)
    client.set_terminated(run_id, status)


# --------------------------------------------------------------------------- one kdistill run


def end_status(summary: dict[str, Any]) -> tuple[str, str]:
    """(MLflow status, why) of a run that ends with ``summary``: FINISHED with one; without one (``RunDir.close`` in
    ``fit``'s ``finally``) KILLED when it stopped to be resumed (``stop_after_epochs``, a signal, a pruned trial) and
    FAILED when an error ended it (divergence, a crash). The error is the exception ``finally`` is running for."""
    if summary:
        return "FINISHED", "finished"
    error = sys.exc_info()[1]
    if error is None:
        return "KILLED", "stopped before its last epoch; resume continues it"
    why = f"{type(error).__name__}: {error}"
    stopped = isinstance(error, (TrainingInterrupted, KeyboardInterrupt)) or type(error).__name__ == "TrialPruned"
    return ("KILLED" if stopped else "FAILED"), why


class MLflowSink:
    """One kdistill run as one MLflow run, continued on resume (its id in ``<run dir>/mlflow_run_id``) and nested
    under ``track.mlflow_parent_run_id`` when set. An MLflow error while training only warns: the run directory
    holds the record, and training goes on."""

    def __init__(self, run_path: Path, config: Config) -> None:
        self.run_path = run_path
        self.uri = tracking_uri(config)
        self.client = _client(self.uri)
        self.experiment_id = _experiment_id(self.client, self.uri, config.track.mlflow_experiment)
        self.run_id = ""
        self.logged_epochs: set[int] = set()  # epochs the MLflow run already has (a resumed run redoes none)
        self.warned = False

    def start(self, config: Config) -> None:
        """Create the run (or reopen the one this run directory names) with its params and tags."""
        id_file = self.run_path / RUN_ID_FILE
        known = id_file.read_text().strip() if id_file.exists() else ""
        run = _reopen(self.client, known) if known else None
        if run is None:
            run = self.client.create_run(self.experiment_id, run_name=config.name)
            atomic_write_text(run.info.run_id, id_file)
        else:
            self.logged_epochs = {int(m.step) for m in self.client.get_metric_history(run.info.run_id, "epoch")}
        self.run_id = run.info.run_id
        params = _params(run_params(config), run.data.params)
        self.client.log_batch(self.run_id, params=params, tags=_tags(self._tags(config)))

    def _tags(self, config: Config) -> dict[str, str]:
        tags = {"kdistill.method": config.method.name, "kdistill.run_dir": str(self.run_path.resolve())}
        parent = config.track.mlflow_parent_run_id
        if parent:
            if _find_run(self.client, parent) is None:
                raise ConfigError(f"track.mlflow_parent_run_id={parent!r}: the MLflow store {self.uri} has no such run")
            tags[PARENT_TAG] = parent
        return tags

    def log(self, record: dict[str, Any]) -> None:
        """The record's numeric fields, ``epoch`` and ``step`` included, at step = epoch (once per epoch: an epoch
        redone after a resume from an earlier checkpoint keeps the values MLflow first received)."""
        epoch = int(record["epoch"])
        if epoch in self.logged_epochs:
            return
        values = {**_finite({k: record[k] for k in ("epoch", "step") if k in record}), **numeric_metrics(record)}
        if self._safely(self.client.log_batch, self.run_id, metrics=_metrics(values, step=epoch)):
            self.logged_epochs.add(epoch)

    def finish(self, summary: dict[str, Any]) -> None:
        """The summary as ``summary.*`` metrics, the run directory's files as artifacts, and the end status."""
        status, why = end_status(summary)
        metrics = {f"summary.{k}": v for k, v in numeric_metrics(summary).items()}
        self._safely(self._finish, metrics, status, why)

    def _finish(self, metrics: dict[str, float], status: str, why: str) -> None:
        latest = self.client.get_run(self.run_id).data.metrics
        new = {k: v for k, v in metrics.items() if latest.get(_key(k)) != v}  # a re-finished run logs no copies
        self.client.log_batch(self.run_id, metrics=_metrics(new, step=0), tags=_tags({"kdistill.outcome": why}))
        files = [self.run_path / name for name in ARTIFACT_FILES] + sorted(self.run_path.glob("*.png"))
        _log_files(self.client, self.run_id, files)
        self.client.set_terminated(self.run_id, status)

    def _safely(self, action: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """Run one MLflow call; on an error warn (the first time) and go on. Whether it succeeded."""
        try:
            action(*args, **kwargs)
        except Exception as error:  # a tracker never stops training: the run directory has the record
            if not self.warned:
                message = f"MLflow run {self.run_id}: {type(error).__name__}: {error}"
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                self.warned = True
            return False
        return True
