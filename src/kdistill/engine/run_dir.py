"""Run directories: the one record of a run that reports and resumes read.

``runs/<name>/`` holds ``config.yaml`` (resolved), ``metrics.jsonl`` (one JSON line per epoch with
losses by term, lr, accuracies, fidelity, time), ``last.pt`` / ``best.pt`` (atomic), ``student.pt``
(the deployable student) and ``summary.json``. Only the main process writes. Optional trackers
(``kdistill.track``) receive the same records through the :class:`MetricSink` interface.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import yaml

from kdistill.checks import name_problems
from kdistill.config import Config, dump_config, load_config, to_dict
from kdistill.contracts import ConfigError, DiskFullError
from kdistill.runtime.distributed import is_main_process
from kdistill.runtime.io import NO_SPACE, atomic_write_text, remove_stale_temp_files


class MetricSink(Protocol):
    """A tracker fed from the run directory's records (TensorBoard, MLflow)."""

    def log(self, record: dict[str, Any]) -> None: ...

    def finish(self, summary: dict[str, Any]) -> None: ...


TrackerFactory = Callable[[Path, Config], list[MetricSink]]  # (run dir, config) -> started trackers


RUN_MARKER = ".kdistill-run"  # written into every run directory kdistill creates: --overwrite removes only those
# keys that may change between the sessions of one run without changing what it computes
RESUMABLE_CHANGES = {
    "track",
    "output_dir",
    "train.progress",
    "data.num_workers",
    "train.checkpoint_every_steps",
    "train.checkpoint_every_minutes",
}


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "kwargs":
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True  # NaN-safe: an unchanged NaN is no change
    return bool(a == b)


def recipe_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every value that differs between two config dicts (NaN equals NaN), leaving out
    what may change between sessions (trackers, progress bars, loader workers, checkpoint cadence)."""
    old, new = _flatten(saved), _flatten(current)
    diffs = []
    for key in sorted(set(old) | set(new)):
        if key.split(".")[0] in RESUMABLE_CHANGES or key in RESUMABLE_CHANGES:
            continue
        if not _same(old.get(key), new.get(key)):
            diffs.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return diffs


def run_path(config: Config) -> Path:
    """``<output_dir>/<name>``, after checking that the name is one plain path component, so a run directory is
    always inside ``output_dir``, and that ``output_dir`` is not a file."""
    output_dir = Path(config.output_dir)
    problems = name_problems(config.name)
    if output_dir.exists() and not output_dir.is_dir():
        problems.append(f"output_dir={str(output_dir)!r} is a file, not a directory")
    if problems:
        raise ConfigError("; ".join(problems))
    return output_dir / config.name


def output_problems(config: Config) -> list[str]:
    """Whether the run directory ``<output_dir>/<name>`` can be made and written, checked without making it: the
    nearest path of it that exists must be a directory (no part of the path a file) that takes a new entry. That is
    tried, not inferred from permission bits (root writes past them, /proc and read-only mounts refuse root): a
    probe directory is made there and removed at once, so nothing is left behind."""
    output_dir = config.output_dir
    if not output_dir or "\x00" in output_dir:
        return [] if not output_dir else [f"output_dir={output_dir!r} holds a NUL character"]
    named = not name_problems(config.name)  # a bad name is reported by itself; then check output_dir alone
    path = Path(output_dir).absolute() / (config.name if named else "")  # as the run directory is made: no ~
    try:
        os.fsencode(path)
    except UnicodeEncodeError:
        return [f"output_dir={output_dir!r} (or name={config.name!r}) holds characters no file name can hold"]
    # "." and ".." as mkdir -p meets them: a missing directory before ".." is made, then left
    current = Path(path.anchor)
    for part in path.parts[1:]:
        if part == "..":
            problem = _cannot_make(current, output_dir, run_named=False, final=False)
            if problem:
                return [problem]
            current = current.parent
        elif part != ".":
            current = current / part
    problem = _cannot_make(current, output_dir, run_named=named, final=True)
    return [problem] if problem else []


def _cannot_make(target: Path, output_dir: str, run_named: bool, final: bool) -> str | None:
    """Why the directory ``target`` (no "." or "..") cannot be made, or, ``final``, made and written; None if it
    can. ``run_named``: ``target`` is the run directory itself (then a file there asks for another run name)."""
    existing, missing = target, []
    while not os.path.lexists(existing) and existing != existing.parent:
        missing.append(existing.name)
        existing = existing.parent
    advice = "choose a directory you can write, e.g. --set output_dir=runs"
    if not existing.is_dir():
        if existing == target and run_named:
            advice = "choose another run name (--set name=...) or output_dir"
        return f"output_dir={output_dir!r} cannot be used: {existing} is a file, not a directory; {advice}"
    if not missing and not final:
        return None  # an existing directory that a ".." only passes through
    limit = _path_limit(existing, "PC_NAME_MAX", 255)
    too_long = [name for name in missing if len(os.fsencode(name)) > limit]
    if too_long or len(os.fsencode(target)) >= _path_limit(existing, "PC_PATH_MAX", 4096):
        what = f"the part {too_long[-1][:40]!r}... is longer than {limit} bytes" if too_long else "the path is too long"
        return f"output_dir={output_dir[:80]!r}...: {what}; choose a shorter output_dir"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".kdistill-write-check-", dir=existing))
    except OSError as error:
        reason = error.strerror or type(error).__name__
        return f"output_dir={output_dir!r} cannot be written: {existing} refuses new entries ({reason}); {advice}"
    return None


def _path_limit(directory: Path, name: str, default: int) -> int:
    """``os.pathconf`` of ``directory`` (e.g. the longest file name its file system takes), or ``default``."""
    try:
        return os.pathconf(directory, name)
    except (OSError, ValueError):
        return default


def is_run_directory(path: Path) -> bool:
    """Whether kdistill made ``path`` (its marker, or the files of a run written before markers existed)."""
    return (path / RUN_MARKER).exists() or ((path / "config.yaml").is_file() and (path / "metrics.jsonl").exists())


class RunDir:
    """``<output_dir>/<name>/``: paths, the metrics and summary writers, and the optional trackers fed from them."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.sinks: list[MetricSink] = []  # optional trackers (TensorBoard, MLflow), main process only

    @classmethod
    def for_config(
        cls, config: Config, resume: bool, overwrite: bool, trackers: TrackerFactory | None = None
    ) -> RunDir:
        run = cls(run_path(config))
        if is_main_process():
            run._prepare(config, resume, overwrite)
            run.sinks = trackers(run.path, config) if trackers is not None else []
        return run

    def _prepare(self, config: Config, resume: bool, overwrite: bool) -> None:
        """Create (or, with ``overwrite``, replace) the directory; on resume check the recipe is the same."""
        if self.path.exists() and any(self.path.iterdir()) and not resume:
            if not overwrite:
                raise ConfigError(
                    f"run directory {self.path} already exists: pass --resume to continue it, "
                    f"--overwrite to replace it, or --set name=<new name>"
                )
            if not is_run_directory(self.path):
                raise ConfigError(
                    f"--overwrite: {self.path} is not a kdistill run directory (no {RUN_MARKER}); it was left "
                    f"untouched. Remove it yourself or choose another name (--set name=...)"
                )
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / RUN_MARKER).touch()
        remove_stale_temp_files(self.path)
        if resume and (self.path / "config.yaml").exists():
            self.check_same_config(config)
        dump_config(config, self.path / "config.yaml")

    def check_same_config(self, config: Config) -> None:
        """Resuming with a different recipe would silently mix two runs: refuse it, listing every difference.
        An unreadable config.yaml is left to the checkpoint's own record of the recipe (compared on restore)."""
        try:
            saved = to_dict(load_config(self.path / "config.yaml"))
        except (ConfigError, yaml.YAMLError, UnicodeDecodeError):
            return
        diffs = recipe_differences(saved, to_dict(config))
        if diffs:
            raise ConfigError(
                f"--resume with a config that differs from {self.path / 'config.yaml'}: {'; '.join(diffs)}. "
                "Resume with the same settings, or start a new run (--set name=...)"
            )

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    def append_metrics(self, record: dict[str, Any]) -> None:
        if is_main_process():
            path = self.path / "metrics.jsonl"
            try:
                with open(path, "a") as handle:
                    handle.write(json.dumps(_finite(record)) + "\n")
            except OSError as error:
                if error.errno in NO_SPACE:
                    raise DiskFullError(
                        error.errno, f"no space left on the device appending to {path}: {error}"
                    ) from error
                raise
            for sink in self.sinks:
                sink.log(record)

    def truncate_metrics_after(self, epoch: int) -> None:
        """On resume, drop lines of epochs the checkpoint does not contain (written after it)."""
        path = self.path / "metrics.jsonl"
        if is_main_process() and path.exists():
            records = _parse_lines(path.read_text())
            lines = [json.dumps(record) for record in records if record["epoch"] <= epoch]
            atomic_write_text("".join(line + "\n" for line in lines), path)

    def write_summary(self, summary: dict[str, Any]) -> None:
        if is_main_process():
            atomic_write_text(json.dumps(_finite(summary), indent=2) + "\n", self.path / "summary.json")
            self.close(summary)

    def close(self, summary: dict[str, Any] | None = None) -> None:
        """Finish the optional trackers (also on an interrupted or stopped run)."""
        for sink in self.sinks:
            sink.finish(summary or {})
        self.sinks = []


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    metrics = path / "metrics.jsonl" if path.is_dir() else path
    return _parse_lines(metrics.read_text())


def _parse_lines(text: str) -> list[dict[str, Any]]:
    """The JSON records of a metrics.jsonl; a line a kill cut short (not valid JSON) is skipped."""
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "epoch" in record:
            records.append(record)
    return records


def read_summary(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / "summary.json").read_text())


def _finite(record: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: store non-finite floats as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
