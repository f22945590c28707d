"""Optional experiment trackers fed from the run directory's records: TensorBoard and MLflow.

Each is imported only when enabled in the ``track`` config section. A resumed run continues the same
MLflow run (its id is kept in ``<run dir>/mlflow_run_id``); see :mod:`kdistill.track.mlflow_runs`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdistill.config import Config, to_dict
from kdistill.contracts import ConfigError
from kdistill.engine.run_dir import MetricSink
from kdistill.track.mlflow_runs import MLflowSink
from kdistill.track.records import flatten, numeric_metrics

__all__ = ["MLflowSink", "TensorBoardSink", "build_sinks", "flatten", "numeric_metrics"]


class TensorBoardSink:
    def __init__(self, run_path: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("track.tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(run_path / "tensorboard"))

    def start(self, config: Config) -> None:
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in flatten(to_dict(config)).items()))

    def log(self, record: dict[str, Any]) -> None:
        for key, value in numeric_metrics(record).items():
            self.writer.add_scalar(key, value, global_step=record["epoch"])
        self.writer.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        self.writer.close()


def build_sinks(run_path: Path, config: Config) -> list[MetricSink]:
    """The trackers ``config.track`` enables, started (the ``trackers`` argument of ``fit``)."""
    sinks: list[TensorBoardSink | MLflowSink] = []
    if config.track.tensorboard:
        sinks.append(TensorBoardSink(run_path))
    if config.track.mlflow:
        sinks.append(MLflowSink(run_path, config))
    for sink in sinks:
        sink.start(config)
    return list(sinks)
