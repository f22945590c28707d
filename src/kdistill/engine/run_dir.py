"""Run directories: the one record of a run that reports and resumes read.

``runs/<name>/`` holds ``config.yaml`` (resolved), ``metrics.jsonl`` (one JSON line per epoch with
losses by term, lr, accuracies, fidelity, time), ``last.pt`` / ``best.pt`` (atomic), ``student.pt``
(the deployable student) and ``summary.json``. Only the main process writes. Optional trackers
(``kdistill.track``) receive the same records through the :class:`MetricSink` interface.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from kdistill.config import Config, dump_config, load_config, to_dict
from kdistill.contracts import ConfigError
from kdistill.runtime.distributed import is_main_process
from kdistill.runtime.io import atomic_write_text


class MetricSink(Protocol):
    """A tracker fed from the run directory's records (TensorBoard, MLflow)."""

    def log(self, record: dict[str, Any]) -> None: ...

    def finish(self, summary: dict[str, Any]) -> None: ...


TrackerFactory = Callable[[Path, Config], list[MetricSink]]  # (run dir, config) -> started trackers


class RunDir:
    """``<output_dir>/<name>/``: paths, the metrics and summary writers, and the optional trackers fed from them."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.sinks: list[MetricSink] = []  # optional trackers (TensorBoard, MLflow), main process only

    @classmethod
    def for_config(
        cls, config: Config, resume: bool, overwrite: bool, trackers: TrackerFactory | None = None
    ) -> RunDir:
        run = cls(Path(config.output_dir) / config.name)
        if is_main_process():
            if run.path.exists() and any(run.path.iterdir()) and not resume:
                if not overwrite:
                    raise ConfigError(
                        f"run directory {run.path} already exists: pass --resume to continue it, "
                        f"--overwrite to replace it, or --set name=<new name>"
                    )
                shutil.rmtree(run.path)
            run.path.mkdir(parents=True, exist_ok=True)
            if resume and (run.path / "config.yaml").exists():
                run.check_same_config(config)
            dump_config(config, run.path / "config.yaml")
            run.sinks = trackers(run.path, config) if trackers is not None else []
        return run

    def check_same_config(self, config: Config) -> None:
        """Resuming with a different recipe would silently mix two runs: refuse it."""
        saved = to_dict(load_config(self.path / "config.yaml"))
        current = to_dict(config)
        ignore = {("train", "progress"), ("data", "num_workers")}
        diffs = []
        for section, value in current.items():
            if section == "track":  # trackers may be switched on or off between sessions
                continue
            if isinstance(value, dict):
                for key, item in value.items():
                    if (section, key) not in ignore and saved.get(section, {}).get(key) != item:
                        diffs.append(f"{section}.{key}: {saved.get(section, {}).get(key)!r} -> {item!r}")
            elif saved.get(section) != value:
                diffs.append(f"{section}: {saved.get(section)!r} -> {value!r}")
        if diffs:
            raise ConfigError(
                f"--resume with a config that differs from {self.path / 'config.yaml'}: " + "; ".join(diffs)
            )

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    def append_metrics(self, record: dict[str, Any]) -> None:
        if is_main_process():
            with open(self.path / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(_finite(record)) + "\n")
            for sink in self.sinks:
                sink.log(record)

    def truncate_metrics_after(self, epoch: int) -> None:
        """On resume, drop lines of epochs the checkpoint does not contain (written after it)."""
        path = self.path / "metrics.jsonl"
        if is_main_process() and path.exists():
            lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["epoch"] <= epoch]
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
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


def read_summary(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / "summary.json").read_text())


def _finite(record: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: store non-finite floats as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
