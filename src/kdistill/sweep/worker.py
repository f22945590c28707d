"""Running points: every seed of a point is a run directory under ``<sweep>/runs``, trained in-process by ``fit``.

A point's runs are named by its values, so a point that was interrupted continues each of its runs from the
last checkpoint, and a finished run is read back, never trained again.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kdistill.config import Config, replace
from kdistill.contracts import TrainingDivergedError, TrainingInterrupted
from kdistill.engine import loop
from kdistill.engine.builders import preflight
from kdistill.engine.run_dir import MetricSink, read_summary, run_path
from kdistill.report.tables import mean_std
from kdistill.sweep.queue import Claimed, claim, requeue
from kdistill.sweep.space import override, point_overrides
from kdistill.sweep.study import (
    ABANDONED_ATTR,
    MESSAGE_ATTR,
    OBJECTIVE_STD_ATTR,
    OWNER_ATTRS,
    RUNS_ATTR,
    SweepSpec,
    load_study,
)
from kdistill.track import build_sinks

if TYPE_CHECKING:
    import optuna

Log = Callable[[str], None]


class TrialPruned(Exception):
    """The pruner judged the point hopeless on its validation accuracy so far."""


class TrialSink:
    """Fed each epoch's record: keeps the trial's heartbeat and, on the point's first seed, reports the validation
    accuracy to the pruner (which may stop the point)."""

    def __init__(self, trial: optuna.trial.Trial, report: bool) -> None:
        self.trial = trial
        self.report = report

    def log(self, record: dict[str, Any]) -> None:
        self.trial.set_user_attr(OWNER_ATTRS[2], time.time())
        value = record.get("val_acc")
        if self.report and isinstance(value, (int, float)) and math.isfinite(value):
            self.trial.report(float(value), step=int(record["epoch"]))
            if self.trial.should_prune():
                raise TrialPruned(f"pruned after epoch {record['epoch']} at val_acc {value:.2f}")

    def finish(self, summary: dict[str, Any]) -> None:
        return None


def run_config(spec: SweepSpec, claimed: Claimed, seed: int, parent_run_id: str | None = None) -> Config:
    """The config of one seed of a point: ``<sweep>/runs/<point>-seed<N>``."""
    overrides = [
        *point_overrides(spec.config, claimed.values),
        override("seed", seed),
        override("name", f"{claimed.name}-seed{seed}"),
        override("output_dir", str(spec.runs_dir)),
    ]
    if parent_run_id is not None:
        overrides.append(override("track.mlflow_parent_run_id", parent_run_id))
    return preflight(replace(spec.config, overrides))


def _finished(path: Path, config: Config) -> dict[str, Any] | None:
    """The summary of a run that already finished this recipe's epochs, else None."""
    if not (path / "summary.json").is_file():
        return None
    summary = read_summary(path)
    return summary if summary.get("epochs") == config.train.epochs and "best_epoch" in summary else None


def run_point(spec: SweepSpec, claimed: Claimed, log: Log, parent_run_id: str | None = None) -> list[dict[str, Any]]:
    """Every seed of the point: finished runs are read back, unfinished ones continue from their checkpoint."""
    summaries = []
    for index in range(spec.trials):
        config = run_config(spec, claimed, spec.config.seed + index, parent_run_id)
        path = run_path(config)
        summary = _finished(path, config)
        if summary is None:
            sink = TrialSink(claimed.trial, report=spec.prune and index == 0)

            def trackers(run: Path, run_config: Config, sink: MetricSink = sink) -> list[MetricSink]:
                return [*build_sinks(run, run_config), sink]

            resume = (path / "last.pt").exists()  # else a fresh start (a kill before the first checkpoint)
            log(f"--- sweep trial {claimed.trial.number}: {config.name}{' (continued)' if resume else ''}")
            summary = loop.fit(config, resume=resume, overwrite=not resume, log=log, trackers=trackers)
        summaries.append(summary)
    return summaries


def _objective(spec: SweepSpec, summaries: list[dict[str, Any]]) -> tuple[float, float]:
    values = [s.get(spec.objective) for s in summaries]
    if any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
        raise TrainingDivergedError(
            f"a run has no {spec.objective}: the sweep's objective is validation accuracy, so the data needs a "
            "validation split (data.val_fraction > 0, or a dataset with its own)"
        )
    return mean_std([float(v) for v in values])  # type: ignore[arg-type]  # checked just above


def run_trial(
    spec: SweepSpec, study: optuna.Study, claimed: Claimed, log: Log, parent_run_id: str | None = None
) -> str:
    """Run one claimed point and record the outcome in the study; returns its state's name. A diverged or pruned
    point is recorded and the sweep goes on; a stop signal queues the point again and stops this worker."""
    import optuna

    state = optuna.trial.TrialState
    trial = claimed.trial
    try:
        summaries = run_point(spec, claimed, log, parent_run_id)
        mean, std = _objective(spec, summaries)
    except TrialPruned as pruned:
        trial.set_user_attr(MESSAGE_ATTR, str(pruned))
        study.tell(trial, state=state.PRUNED)
        return "PRUNED"
    except TrainingDivergedError as error:
        trial.set_user_attr(MESSAGE_ATTR, str(error))
        study.tell(trial, state=state.FAIL)
        log(f"sweep: trial {trial.number} ({claimed.name}) failed: {error}")
        return "FAIL"
    except (TrainingInterrupted, KeyboardInterrupt):
        trial.set_user_attr(ABANDONED_ATTR, True)
        study.tell(trial, state=state.FAIL)
        requeue(study, trial)
        raise
    except Exception as error:  # a config, data or checkpoint problem: every point would fail the same way
        trial.set_user_attr(MESSAGE_ATTR, f"{type(error).__name__}: {error}")
        study.tell(trial, state=state.FAIL)
        raise
    trial.set_user_attr(OBJECTIVE_STD_ATTR, std)
    trial.set_user_attr(RUNS_ATTR, [s["run_dir"] for s in summaries])
    study.tell(trial, mean)
    log(f"sweep: trial {trial.number} ({claimed.name}): {spec.objective} {mean:.2f} ± {std:.2f}")
    return "COMPLETE"


def work(spec: SweepSpec, worker: int = 0, log: Log = print, parent_run_id: str | None = None) -> int:
    """Claim and run points until none is left; returns how many this worker ran."""
    study, storage = load_study(spec, worker)
    done = 0
    while (claimed := claim(spec, study, storage)) is not None:
        run_trial(spec, study, claimed, log, parent_run_id)
        done += 1
    return done


def _worker_main(spec: SweepSpec, worker: int, threads: int, parent_run_id: str | None) -> None:
    """A worker process: its share of the CPU threads, lines prefixed with its number."""
    torch.set_num_threads(threads)
    prefix = f"[worker {worker}] "
    try:
        work(spec, worker, lambda line: print(prefix + line, flush=True), parent_run_id)
    except TrainingInterrupted as stopped:
        print(prefix + str(stopped), file=sys.stderr, flush=True)
        sys.exit(128 + stopped.signal_number)
    except Exception as error:
        print(f"{prefix}error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)


def run_workers(spec: SweepSpec, log: Log, parent_run_id: str | None = None) -> list[int]:
    """``spec.workers`` worker processes on this machine (spawned: a clean torch in each); a stop signal to the
    sweep reaches every worker, which checkpoints and queues its point again. Returns their exit codes."""
    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // spec.workers)
    processes = [
        context.Process(
            target=_worker_main, args=(spec, index, threads, parent_run_id), name=f"kdistill-worker-{index}"
        )
        for index in range(spec.workers)
    ]
    for process in processes:
        process.start()
    log(f"sweep: {spec.workers} worker processes, {threads} thread(s) each")

    def forward(number: int, frame: object) -> None:
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, number)

    previous = {number: signal.signal(number, forward) for number in (signal.SIGTERM, signal.SIGUSR1)}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the workers directly
    try:
        for process in processes:
            process.join()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return [process.exitcode if process.exitcode is not None else 1 for process in processes]
