"""``kdistill compress``: from a teacher and a deployment budget to the best student, searched, distilled, exported
and measured.

1. **Teacher**: built from the config with its weights and measured on the runtime (parameters, FLOPs, artefact
   size, batch-1 latency, throughput), so relative budgets have a reference.
2. **Screen**: every architecture of the space's grid is built untrained and measured (seconds each; relative
   timing limits interleaved with the teacher, :func:`kdistill.deploy.runtime.measure_interleaved`); an infeasible
   one is recorded with its numbers and never trained. A budget no architecture meets stops here, with the
   smallest one's numbers next to the budget.
3. **Search**: an Optuna multi-objective study (validation accuracy up, the budget's primary quantity down; TPE)
   proposes candidates (architecture, method, settings, lr). Successive halving (asynchronous, ASHA): a candidate
   trains ``min_epochs`` first; the top 1/eta of each rung, in Pareto order (:func:`next_promotion`), are promoted
   to eta times the epochs, up to the final schedule. Every run shares one data stream (``data.stream_seed``), so
   the teacher cache serves all of them: the teacher is paid once. No candidate starts after ``--time``; a killed
   search resumes where it stopped (finished runs are never repeated, an interrupted one continues from its
   checkpoint). Selection reads validation only.
4. **Finish**: the best candidate inside the budget trains the final schedule with ``--trials`` seeds, is exported
   to ONNX (and int8 with ``--int8``), its parity checked, and **its budget re-measured on the exported artefact**:
   a student that misses the budget there is reported as missing it. The reported test accuracy is the final
   runs' (candidate runs record theirs, as every run does; the search reads only validation accuracy).
5. **Report** (:mod:`kdistill.compress.report`): ``compress.md`` / ``.csv`` (every candidate, feasible or not,
   and why it stopped), ``compress.png`` and ``summary.json``.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from kdistill.compress.budget import Budget
from kdistill.compress.space import SearchSpace, architecture, architecture_key
from kdistill.config import Config, ModelConfig, dump_config, replace
from kdistill.contracts import ConfigError, DataInfo, TrainingDivergedError
from kdistill.data import Data, build_data, data_info
from kdistill.deploy.export import export_run, first_images
from kdistill.deploy.runtime import Deployable, Runtime, measure_interleaved, onnx_accuracy, quantize_static_int8
from kdistill.engine.builders import preflight, resolve_architectures
from kdistill.engine.export import load_student
from kdistill.engine.loop import fit
from kdistill.models import build_model, count_parameters
from kdistill.models.input_adapter import InputSpec
from kdistill.report.compression import compare_runs, count_flops
from kdistill.runtime.io import atomic_write_text
from kdistill.runtime.storage import claim_lock_in, open_storage

Log = Callable[[str], None]
Measured = dict[str, float]
STREAM_SEED = 0  # every candidate trains on one data stream: the teacher cache serves them all
CANDIDATE, RUNG, OWNER, ARCH = "compress.candidate", "compress.rung", "compress.owner", "compress.architecture"
STOPPED, EPOCHS, RUN = "compress.stopped", "compress.epochs", "compress.run"
TEACHER_VAL, TEACHER_LIVE, USED = "compress.teacher_val_acc", "compress.teacher_live_samples", "compress.seconds"
TEACHER_PASSES = "compress.teacher_passes"  # passes over a split the teacher store computed (not read) for a run
CALIBRATION_IMAGES = 512  # training images the int8 activation ranges are calibrated on


@dataclass
class CompressSpec:
    """One compress run: the base config (data, teacher, final schedule), the budget, the space and how to search."""

    config: Config
    budget: Budget
    space: SearchSpace
    out_dir: Path
    runtime: str = "onnxruntime"
    time_limit_s: float | None = None  # no candidate starts after this much search time (summed over restarts)
    max_candidates: int | None = None  # or after this many candidates
    trials: int = 3  # seeds of the final training
    int8: bool = False
    storage: str | None = None  # Optuna storage URL; None: SQLite in out_dir
    workers: int = 1  # search processes on this machine

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out_dir / 'study.db').resolve()}"


# ----------------------------------------------------------------------------- measuring


def _state_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


class Meter:
    """Measures models for the budget on one runtime; relative timing limits interleaved with the teacher."""

    def __init__(self, spec: CompressSpec, teacher: nn.Module, info: DataInfo) -> None:
        self.spec, self.info = spec, info
        self.runtime = Runtime(spec.runtime)
        self.work = spec.out_dir / "artefacts"
        self.teacher_deployable = self._deployable(teacher, "teacher")
        self.teacher = self._counts(teacher) | self._timed(self.teacher_deployable, teacher, None)

    def _counts(self, model: nn.Module) -> Measured:
        return {"params": float(count_parameters(model)), "flops": float(count_flops(model, self.info.input_shape))}

    def _deployable(self, model: nn.Module, name: str) -> Deployable:
        return Deployable.from_module(model.eval(), self.info.input_shape, self.runtime, self.work, name=name)

    def _timed(self, deployable: Deployable, model: nn.Module | None, reference: Deployable | None) -> Measured:
        """Artefact bytes (the ONNX file; the state dict's on torch runtimes) and the budget's timed quantities,
        with their ratio to the teacher's, timed interleaved, when ``reference`` is the teacher's."""
        size = deployable.file_bytes if deployable.file_bytes is not None else _state_bytes(model or nn.Module())
        measured: Measured = {"size": float(size)}
        for limit in self.spec.budget.limits:
            if limit.quantity not in ("latency", "throughput"):
                continue
            quantity = "latency_ms" if limit.quantity == "latency" else "throughput"
            if reference is None:
                value = deployable.latency_ms() if quantity == "latency_ms" else deployable.throughput(limit.batch)
                measured[limit.key] = value
            else:
                timing = measure_interleaved(reference, deployable, quantity, limit.batch)
                measured[limit.key], measured[f"{limit.key}_ratio"] = timing.b, timing.ratio
        return measured

    def measure(self, model: nn.Module, name: str) -> Measured:
        """Parameters and FLOPs; then, unless those already miss the budget, size and timings on the runtime."""
        measured = self._counts(model)
        if self.misses(measured):
            return measured
        deployable = self._deployable(model, name)
        try:
            return measured | self._timed(deployable, model, self.teacher_deployable)
        finally:
            deployable.close()

    def measure_artefact(self, onnx_path: Path, model: nn.Module) -> Measured:
        """The budget's quantities of an exported student: parameters of the file, its bytes and its timings on
        ONNX Runtime (the model in memory on a torch runtime), FLOPs of the model it was exported from."""
        if self.runtime.name == "onnxruntime":
            deployable = Deployable.from_onnx(onnx_path, self.runtime, self.info.input_shape)
        else:
            deployable = self._deployable(model, "final")
        try:
            measured = {
                "params": float(deployable.parameters),
                "flops": float(count_flops(model, self.info.input_shape)),
            }
            return measured | self._timed(deployable, model, self.teacher_deployable)
        finally:
            deployable.close()

    def misses(self, measured: Measured) -> list[str]:
        """The limits ``measured`` breaks among those it has numbers for."""
        known = tuple(limit for limit in self.spec.budget.limits if limit.key in measured)
        return Budget(known).misses(measured, self.teacher) if known else []


def primary_value(spec: CompressSpec, measured: Measured, teacher: Measured) -> float:
    """The budget's primary quantity of a candidate: its ratio to the teacher's for a relative limit."""
    limit = spec.budget.primary
    if limit.key not in measured:
        return math.nan  # screened out before it was timed
    if not limit.relative:
        return measured[limit.key]
    return measured.get(f"{limit.key}_ratio", measured[limit.key] / max(teacher[limit.key], 1e-12))


def shown_measure(key: str, value: float) -> str:
    if key.endswith("_ratio"):
        return f"{key} {value:.3g}x"
    return f"{key} {value:,.0f}" if value >= 100 else f"{key} {value:.3g}"


# ----------------------------------------------------------------------------- set-up


def _with(config: Config, method: str, settings: dict[str, Any]) -> Config:
    """``config`` with ``method`` and the searched ``settings``: the config's own method settings are kept for the
    method it names, another method starts from its defaults."""
    switch = [] if config.method.name == method else [f"method={{name: {method}}}"]
    return replace(config, switch + [f"{key}={json.dumps(value)}" for key, value in settings.items()])


def check_spec(spec: CompressSpec) -> None:
    """Everything checked before anything is measured or trained: the config and its teacher, every method of the
    space with its first values, the runtime, the limits."""
    if not spec.config.teachers():
        raise ConfigError("compress needs a teacher: set teacher.checkpoint (a kdistill run or a weights file)")
    if spec.trials < 1:
        raise ConfigError(f"--trials {spec.trials}: at least one seed for the final training")
    if spec.time_limit_s is not None and spec.time_limit_s <= 0:
        raise ConfigError("--time must be positive, e.g. --time 30m")
    if spec.time_limit_s is None and spec.max_candidates is None:
        raise ConfigError("give the search an end: --time (e.g. --time 30m) and/or --max-candidates N")
    Runtime(spec.runtime)
    family, knobs = spec.space.architectures()[0]
    name, kwargs = architecture(family, knobs)
    with_student = replace(spec.config, [f"student={{name: {json.dumps(name)}, kwargs: {json.dumps(kwargs)}}}"])
    for method, choices in spec.space.methods.items():
        settings = {f"method.{c.name.split('.', 1)[1]}": c.grid()[0] for c in choices}
        preflight(_with(with_student, method, settings), output=False)


def teacher_and_data(config: Config) -> tuple[nn.Module, Data, DataInfo]:
    """The teacher with its weights, and the data of the stream every candidate trains on."""
    config = resolve_architectures(config)
    data = build_data(config.data, config.seed, STREAM_SEED)
    info = data_info(data, config.data.batch_size)
    normalization = InputSpec(info.input_mean, info.input_std) if info.input_mean and info.input_std else None
    teacher = build_model(config.teachers()[0], info.num_classes, info.input_shape, "teacher", normalization)
    return teacher.eval(), data, info


def student_model(family: str, knobs: dict[str, Any], info: DataInfo) -> tuple[nn.Module, ModelConfig]:
    name, kwargs = architecture(family, knobs)
    model_config = ModelConfig(name=name, kwargs=kwargs)
    torch.manual_seed(0)
    return build_model(model_config, info.num_classes, info.input_shape, "student"), model_config


# ----------------------------------------------------------------------------- screening


def screen_one(family: str, knobs: dict[str, Any], meter: Meter, info: DataInfo) -> dict[str, Any]:
    model, model_config = student_model(family, knobs, info)
    measured = meter.measure(model, f"screen-{family}")
    return {
        "family": family,
        "knobs": knobs,
        "model": {"name": model_config.name, "kwargs": model_config.kwargs},
        "measured": measured,
        "misses": meter.misses(measured),
    }


class Screen:
    """Screened architectures (``screen.json`` in the output directory): measured once, kept across restarts."""

    def __init__(self, spec: CompressSpec, meter: Meter, info: DataInfo) -> None:
        self.path = spec.out_dir / "screen.json"
        self.meter, self.info = meter, info
        self.rows: dict[str, dict[str, Any]] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, family: str, knobs: dict[str, Any]) -> dict[str, Any]:
        key = architecture_key(family, knobs)
        if key not in self.rows:
            self.rows[key] = screen_one(family, knobs, self.meter, self.info)
            atomic_write_text(json.dumps(self.rows, indent=1), self.path)
        return self.rows[key]

    def run(self, spec: CompressSpec, log: Log) -> None:
        """Every architecture of the space's grid; refuses a budget none of them meets."""
        started = time.perf_counter()
        grid = spec.space.architectures()
        for family, knobs in grid:
            self.get(family, knobs)
        feasible = sum(1 for row in self.rows.values() if not row["misses"])
        log(f"screened {len(grid)} architectures in {time.perf_counter() - started:.1f} s: {feasible} within budget")
        if feasible:
            return
        smallest = min(self.rows.values(), key=lambda row: row["measured"].get("params", math.inf))
        raise ConfigError(
            f"no architecture of the search space {spec.space.source} meets the budget ({spec.budget.describe()}): "
            f"the smallest, {smallest['family']} {smallest['knobs']}, measures "
            + ", ".join(shown_measure(k, v) for k, v in smallest["measured"].items())
            + " against the teacher's "
            + ", ".join(shown_measure(k, v) for k, v in self.meter.teacher.items())
            + "; it misses "
            + "; ".join(smallest["misses"])
            + ". Loosen the budget or add smaller widths or depths to the space"
        )


# ----------------------------------------------------------------------------- the search


@dataclass
class SearchStudies:
    """The search's two Optuna studies in one storage. ``sampling`` holds each candidate's first rung: the results
    TPE learns from are all of one fidelity (a promoted candidate's longer runs, more accurate for their epochs alone,
    would pull the sampler towards whatever was promoted). ``promotions`` holds the later rungs, replayed settings
    that are never sampled."""

    sampling: optuna.Study
    promotions: optuna.Study

    def trials(self, states: tuple[optuna.trial.TrialState, ...]) -> list[optuna.trial.FrozenTrial]:
        return [
            t for study in (self.sampling, self.promotions) for t in study.get_trials(deepcopy=False, states=states)
        ]

    def completed(self) -> list[optuna.trial.FrozenTrial]:
        return self.trials((optuna.trial.TrialState.COMPLETE,))


def load_studies(spec: CompressSpec, worker: int = 0) -> SearchStudies:
    """The search's studies (created on first use); each worker's sampler has its own seed."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage, name = open_storage(spec.storage_url), f"compress-{spec.out_dir.resolve().name}"
    sampler = optuna.samplers.TPESampler(seed=spec.config.seed + 1000 * worker, multivariate=True, n_startup_trials=8)
    directions = [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    sampling = optuna.create_study(
        study_name=name, storage=storage, directions=directions, load_if_exists=True, sampler=sampler
    )
    promotions = optuna.create_study(
        study_name=f"{name}-promotions", storage=storage, directions=directions, load_if_exists=True,
        sampler=optuna.samplers.RandomSampler(seed=spec.config.seed),  # never used: every trial there is enqueued
    )  # fmt: skip
    return SearchStudies(sampling, promotions)


def _alive(owner: Any) -> bool:
    """Whether the process that claimed a trial still runs (another host's: assumed alive)."""
    if not isinstance(owner, list) or len(owner) != 2 or owner[0] != socket.gethostname():
        return True
    try:
        os.kill(int(owner[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def requeue_abandoned(study: optuna.Study) -> int:
    """Trials left running by a killed process go back into the queue (their runs continue from last.pt)."""
    count = 0
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if not _alive(trial.user_attrs.get(OWNER)):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            attrs = {key: value for key, value in trial.user_attrs.items() if key in (CANDIDATE, RUNG)}
            study.enqueue_trial(trial.params, user_attrs=attrs, skip_if_exists=False)
            count += 1
    return count


def pareto_ranks(points: list[tuple[float, float]]) -> list[int]:
    """Non-dominated sorting of (accuracy, cost) points, accuracy up and cost down: 0 for the Pareto front, 1 for the
    front of the rest, and so on (NSGA-II's ranks, Deb et al. 2002; O(n^2) per layer, for a few hundred points)."""
    ranks, remaining, rank = [0] * len(points), set(range(len(points))), 0
    while remaining:
        front = {i for i in remaining if not any(_dominates(points[j], points[i]) for j in remaining if j != i)}
        for i in front:
            ranks[i] = rank
        remaining -= front
        rank += 1
    return ranks


def crowding_distances(points: list[tuple[float, float]]) -> list[float]:
    """NSGA-II's crowding distance of each point within its set (one Pareto layer): infinite for the two ends, else
    the normalised gap between its neighbours along each objective, summed; a larger one is a less crowded point."""
    distances = [0.0] * len(points)
    if not points:
        return distances
    for objective in (0, 1):
        order = sorted(range(len(points)), key=lambda i: points[i][objective])
        span = points[order[-1]][objective] - points[order[0]][objective]
        distances[order[0]] = distances[order[-1]] = math.inf
        if span > 0:
            for before, here, after in zip(order, order[1:], order[2:]):
                distances[here] += (points[after][objective] - points[before][objective]) / span
    return distances


def promotion_order(points: list[tuple[float, float]]) -> list[int]:
    """Indices of (accuracy, cost) points, best first: by Pareto rank, then within a rank the less crowded first (the
    ends of each layer: the most accurate and the cheapest), then accuracy."""
    ranks = pareto_ranks(points)
    crowding = [0.0] * len(points)
    for rank in set(ranks):
        layer = [i for i in range(len(points)) if ranks[i] == rank]
        for i, distance in zip(layer, crowding_distances([points[i] for i in layer])):
            crowding[i] = distance
    return sorted(range(len(points)), key=lambda i: (ranks[i], -crowding[i], -points[i][0]))


def _dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """``a`` is at least as accurate at no higher cost, and strictly better in one of them."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def next_promotion(spec: CompressSpec, studies: SearchStudies, rungs: list[int]) -> tuple[dict, dict] | None:
    """(params, attrs) of the next candidate to promote, not yet promoted: the top 1/eta of its rung in Pareto order
    (multi-objective ASHA, Schmucker et al., arXiv:2106.12639, with NSGA-II's ordering: :func:`promotion_order` on
    validation accuracy and the primary quantity), so the cheap end of the trade-off reaches the last rung too."""
    states = (optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.COMPLETE)
    trials = studies.trials(states)  # read once: this runs at every claim
    taken = {(t.user_attrs.get(CANDIDATE), t.user_attrs.get(RUNG)) for t in trials}
    finished = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.values[0] >= 0]
    for rung in range(len(rungs) - 1):
        done = [t for t in finished if t.user_attrs.get(RUNG) == rung]
        order = promotion_order([(t.values[0], t.values[1]) for t in done])
        for trial in [done[i] for i in order][: len(done) // spec.space.eta]:
            if (trial.user_attrs[CANDIDATE], rung + 1) not in taken:
                return trial.params, {CANDIDATE: trial.user_attrs[CANDIDATE], RUNG: rung + 1}
    return None


def candidate_config(spec: CompressSpec, model: dict[str, Any], method: str, settings: dict[str, Any], name: str):
    """The run config of a candidate: the base config with its student, method and settings, on the shared stream."""
    kwargs = json.dumps(model["kwargs"])
    return replace(
        _with(spec.config, method, settings),
        [
            f"student={{name: {json.dumps(model['name'])}, kwargs: {kwargs}}}",
            f"name={name}",
            f"output_dir={spec.out_dir / 'runs'}",
            f"data.stream_seed={STREAM_SEED}",
            "train.progress=false",
        ],
    )


def train_or_continue(config: Config, log: Log = lambda _: None) -> dict[str, Any] | str:
    """A run, continued from its checkpoint if a kill interrupted it: its summary, or why it failed."""
    resume = (Path(config.output_dir) / config.name / "last.pt").exists()
    try:
        return fit(config, resume=resume, overwrite=not resume, log=log)
    except TrainingDivergedError as error:
        return f"failed: {str(error).splitlines()[0]}"


class Search:
    """The successive-halving loop over one study (see the module docstring), in one of ``--workers`` processes."""

    def __init__(self, spec: CompressSpec, screen: Screen, log: Log, deadline: float | None, worker: int = 0) -> None:
        self.spec, self.screen, self.log, self.deadline = spec, screen, log, deadline
        self.studies = load_studies(spec, worker)
        self.rungs = spec.space.rungs(spec.config.train.epochs)

    def over(self) -> bool:
        """No candidate starts once the time or the candidate limit is reached."""
        if self.deadline is not None and time.time() >= self.deadline:
            return True
        trained = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
        names = {t.user_attrs.get(CANDIDATE) for t in self.studies.sampling.get_trials(deepcopy=False, states=trained)}
        return self.spec.max_candidates is not None and len(names - {None}) >= self.spec.max_candidates

    def claim(self) -> optuna.Trial | None:
        """The next trial to run, decided and claimed under the output directory's lock: an interrupted run, else
        a promotion (not after the deadline), else a new candidate (not after either limit); None: stop."""
        with claim_lock_in(self.spec.out_dir):
            for study in (self.studies.promotions, self.studies.sampling):
                if study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
                    return self._ask(study)
            promotion = next_promotion(self.spec, self.studies, self.rungs)
            timed_out = self.deadline is not None and time.time() >= self.deadline
            if (promotion is None and self.over()) or (promotion is not None and timed_out):
                return None
            if promotion is None:
                return self._ask(self.studies.sampling)
            self.studies.promotions.enqueue_trial(promotion[0], user_attrs=promotion[1])
            return self._ask(self.studies.promotions)

    @staticmethod
    def _ask(study: optuna.Study) -> optuna.Trial:
        trial = study.ask()
        trial.set_user_attr(OWNER, [socket.gethostname(), os.getpid()])
        return trial

    def run(self) -> None:
        while (trial := self.claim()) is not None:
            self.step(trial)

    def step(self, trial: optuna.Trial) -> None:
        """Sample (or replay) one trial's candidate, skip it if over budget, else train it at its rung."""
        family, knobs, method, settings = self.spec.space.sample(trial)
        candidate = trial.user_attrs.get(CANDIDATE) or f"c{trial.number:03d}"
        rung = int(trial.user_attrs.get(RUNG, 0))
        for key, value in ((CANDIDATE, candidate), (RUNG, rung)):
            trial.set_user_attr(key, value)
        row = self.screen.get(family, knobs)
        trial.set_user_attr(ARCH, architecture_key(family, knobs))
        primary = primary_value(self.spec, row["measured"], self.screen.meter.teacher)
        if row["misses"]:
            trial.set_user_attr(STOPPED, "over budget: " + "; ".join(row["misses"]))
            trial.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return
        epochs = self.rungs[rung]
        name = f"{candidate}-r{rung}"
        # evaluated once, after its last epoch: the search reads that validation accuracy (never test)
        overrides = [f"train.epochs={epochs}", f"train.eval_every={epochs}"]
        config = replace(candidate_config(self.spec, row["model"], method, settings, name), overrides)
        self.log(f"  {name}: {family} {knobs}, {method} {_settings_text(settings)}, {epochs} epochs")
        result = train_or_continue(config)
        trial.set_user_attr(EPOCHS, epochs)
        trial.set_user_attr(RUN, str(Path(config.output_dir) / name))
        if isinstance(result, str):
            self.log(f"    {result}")
            trial.set_user_attr(STOPPED, result)
            trial.study.tell(trial, [-1.0, primary])
            return
        val = float(result["final_val_acc"])
        trial.set_user_attr(TEACHER_VAL, result.get("teacher_val_acc"))
        trial.set_user_attr(TEACHER_LIVE, int(result.get("teacher_live_samples") or 0))
        trial.set_user_attr(TEACHER_PASSES, int(result.get("teacher_store_misses") or 0))
        trial.study.tell(trial, [val, primary])
        self.log(f"    val acc {val:.2f}%")


def run_search(spec: CompressSpec, screen: Screen, log: Log, workers: int = 1) -> SearchStudies:
    """The search in ``workers`` processes (spawned, each with its share of the cores) until its limits; the search
    time is summed over restarts in the study (``--time`` counts it all)."""
    studies = load_studies(spec)
    study = studies.sampling
    requeued = requeue_abandoned(studies.sampling) + requeue_abandoned(studies.promotions)
    if requeued:
        log(f"continuing {requeued} run(s) a stopped search left unfinished")
    used, started = float(study.user_attrs.get(USED, 0.0)), time.time()
    deadline = started + max(0.0, spec.time_limit_s - used) if spec.time_limit_s is not None else None
    if workers == 1:
        Search(spec, screen, log, deadline).run()
    else:
        context = multiprocessing.get_context("spawn")
        threads = max(1, (os.cpu_count() or 1) // workers)
        processes = [
            context.Process(target=_worker, args=(spec, deadline, threads, index), name=f"kdistill-compress-{index}")
            for index in range(workers)
        ]
        log(f"search: {workers} worker processes, {threads} thread(s) each")
        for process in processes:
            process.start()
        for process in processes:
            process.join()
        failed = [p.name for p in processes if p.exitcode != 0]
        if failed:
            raise RuntimeError(f"search workers {failed} failed (see their output); run the same command to continue")
    study.set_user_attr(USED, used + time.time() - started)
    if deadline is not None and time.time() >= deadline:
        log(f"search time {(used + time.time() - started) / 60:.1f} min reached --time: no new candidate started")
    return studies


def _worker(spec: CompressSpec, deadline: float | None, threads: int, index: int) -> None:
    """One search worker process: its own teacher measurement (for architectures the grid did not screen)."""
    torch.set_num_threads(threads)
    teacher, _, info = teacher_and_data(spec.config)
    screen = Screen(spec, Meter(spec, teacher, info), info)
    Search(spec, screen, lambda line: print(f"[worker {index}] {line}", flush=True), deadline, index).run()


def _settings_text(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items())


# ----------------------------------------------------------------------------- candidates, the final student


@dataclass
class Candidate:
    """One candidate's furthest result (or an architecture screened out): what it is, measures and reached."""

    candidate: str
    architecture: str
    family: str
    knobs: dict[str, Any]
    params: dict[str, Any]
    measured: Measured
    misses: list[str]
    rung: int = -1
    epochs: int = 0
    val_acc: float | None = None
    status: str = ""
    run: str | None = None
    front: bool = False


def _candidate(trial: optuna.trial.FrozenTrial, row: dict[str, Any], last_rung: int) -> Candidate:
    rung = int(trial.user_attrs.get(RUNG, 0))
    finished = trial.state == optuna.trial.TrialState.COMPLETE and trial.values[0] >= 0
    stopped = trial.user_attrs.get(STOPPED) or (
        "reached the last rung" if rung == last_rung else f"not promoted after rung {rung}"
    )
    settings = {k: v for k, v in trial.params.items() if k != "family"}
    return Candidate(
        trial.user_attrs[CANDIDATE], trial.user_attrs[ARCH], row["family"], row["knobs"], settings,
        row["measured"], row["misses"], rung, int(trial.user_attrs.get(EPOCHS, 0)),
        trial.values[0] if finished else None, stopped, trial.user_attrs.get(RUN),
    )  # fmt: skip


def candidates(spec: CompressSpec, studies: SearchStudies, screen: Screen) -> list[Candidate]:
    """Every trained candidate at its furthest rung, and every screened architecture over the budget (never trained)."""
    last_rung = len(spec.space.rungs(spec.config.train.epochs)) - 1
    found: dict[str, Candidate] = {}
    for trial in studies.completed():  # trials proposed over the budget are the screened rows below
        if ARCH not in trial.user_attrs:
            continue
        current = found.get(trial.user_attrs[CANDIDATE])
        if current is None or current.rung < int(trial.user_attrs.get(RUNG, 0)):
            found[trial.user_attrs[CANDIDATE]] = _candidate(trial, screen.rows[trial.user_attrs[ARCH]], last_rung)
    for key, row in screen.rows.items():
        if row["misses"]:
            status = "over budget: " + "; ".join(row["misses"])
            found[key] = Candidate(
                "-", key, row["family"], row["knobs"], {}, row["measured"], row["misses"], status=status
            )
    rows = list(found.values())
    mark_front(rows, lambda c: primary_value(spec, c.measured, screen.meter.teacher))
    return rows


def mark_front(rows: list[Candidate], cost: Callable[[Candidate], float]) -> None:
    """Pareto front of the trained candidates within the budget: no other has higher accuracy at no higher cost."""
    trained = [c for c in rows if c.val_acc is not None and not c.misses]
    for c, rank in zip(trained, pareto_ranks([(c.val_acc or 0.0, cost(c)) for c in trained])):
        c.front = rank == 0


def best_candidate(rows: list[Candidate]) -> Candidate:
    """The candidate within the budget that reached the highest rung, with the best validation accuracy there."""
    trained = [c for c in rows if c.val_acc is not None and not c.misses]
    if not trained:
        raise ConfigError("no candidate within the budget finished a run: give the search more time (--time)")
    return max(trained, key=lambda c: (c.rung, c.val_acc or 0.0))


def final_config(spec: CompressSpec, best: Candidate, screen: Screen) -> Config:
    method = best.params["method"]
    settings = {
        (key if key.startswith("optim.") else f"method.{key.split('.', 1)[1]}"): value
        for key, value in best.params.items()
        if key.startswith("optim.") or key.startswith(f"{method}.")
    }
    # runs/final-seed<N>, next to the search's runs: the same teacher store serves them
    return candidate_config(spec, screen.rows[best.architecture]["model"], method, settings, "final")


def train_final(spec: CompressSpec, config: Config) -> list[dict[str, Any]]:
    """The final schedule with ``spec.trials`` seeds (``final-seed<N>``), each continued if a kill stopped it."""
    summaries = []
    for seed in range(config.seed, config.seed + spec.trials):
        result = train_or_continue(replace(config, [f"seed={seed}", f"name={config.name}-seed{seed}"]))
        if isinstance(result, str):
            raise TrainingDivergedError(f"the final training of seed {seed} {result}")
        summaries.append(result)
    return summaries


def int8_report(meter: Meter, artefact: Path, model: nn.Module, data: Data, fp32_measured: Measured) -> dict[str, Any]:
    """int8 (ONNX Runtime static quantisation calibrated on training images) of the ``artefact`` exported from
    ``model``: its test accuracy, budget numbers and misses next to the fp32 artefact's."""
    calibration, _ = first_images(data.train, CALIBRATION_IMAGES)
    quantised = quantize_static_int8(artefact, calibration, artefact.with_name("student_int8.onnx"))
    images, targets = first_images(data.test, len(data.test))  # type: ignore[arg-type]
    accuracy, _ = onnx_accuracy(quantised, images, targets)
    fp32_accuracy, _ = onnx_accuracy(artefact, images, targets)
    measured = meter.measure_artefact(quantised, model)
    return {
        "artefact": str(quantised),
        "test_acc": accuracy,
        "fp32_test_acc_onnx": fp32_accuracy,
        "measured": measured,
        "fp32_measured": fp32_measured,
        "meets_budget": not meter.misses(measured),
        "misses": meter.misses(measured),
    }


def finish(spec: CompressSpec, best: Candidate, meter: Meter, screen: Screen, data: Data, log: Log) -> dict[str, Any]:
    """Train the best candidate's final schedule, export seed 0's student and re-measure the budget on the file."""
    config = final_config(spec, best, screen)
    dump_config(config, spec.out_dir / "final.yaml")
    shown = f"{best.family} {best.knobs}, {_settings_text(best.params)}"
    log(f"final: {shown}: {config.train.epochs} epochs x {spec.trials} seeds")
    summaries = train_final(spec, config)
    tests = [float(s["final_test_acc"]) for s in summaries]
    run_dir = Path(summaries[0]["run_dir"])
    parity = export_run(run_dir, "onnx")
    artefact = run_dir / "export" / "student.onnx"
    model, _, _ = load_student(run_dir / "student.pt")
    measured = meter.measure_artefact(artefact, model)
    misses = meter.misses(measured)
    compare_runs([s["run_dir"] for s in summaries], spec.out_dir / "compression")  # kdistill compare's report
    result: dict[str, Any] = {
        "candidate": best.candidate, "architecture": best.architecture, "settings": best.params,
        "config": str(spec.out_dir / "final.yaml"), "runs": [s["run_dir"] for s in summaries],
        "test_acc": tests, "test_acc_mean": statistics.mean(tests),
        "test_acc_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
        "val_acc": [s.get("final_val_acc") for s in summaries],
        "teacher_test_acc": summaries[0].get("teacher_test_acc"),
        "teacher_live_samples": sum(int(s.get("teacher_live_samples") or 0) for s in summaries),
        "teacher_split_passes": sum(int(s.get("teacher_store_misses") or 0) for s in summaries),
        "artefact": str(artefact), "parity": parity, "measured_on_artefact": measured,
        "meets_budget": not misses, "misses": misses,
    }  # fmt: skip
    verdict = "within the budget" if not misses else "MISSES the budget: " + "; ".join(misses)
    log(f"final: test acc {result['test_acc_mean']:.2f} ± {result['test_acc_std']:.2f}%; {artefact.name}: {verdict}")
    if spec.int8:
        result["int8"] = int8_report(meter, artefact, model, data, measured)
        log(f"int8: test acc {result['int8']['test_acc']:.2f}% (fp32 ONNX {result['int8']['fp32_test_acc_onnx']:.2f}%)")
    return result
