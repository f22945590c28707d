"""Optional experiment trackers fed from the run directory's records: TensorBoard and MLflow.

Each is imported only when enabled in the ``track`` config section. A resumed run continues the same
MLflow run (its id is kept in ``<run dir>/mlflow_run_id``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kdistill.config import Config, to_dict
from kdistill.contracts import ConfigError
from kdistill.engine.run_dir import MetricSink


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def numeric_metrics(record: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in record.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and k not in ("epoch", "step")
    }


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


class MLflowSink:
    def __init__(self, run_path: Path, config: Config) -> None:
        try:
            import mlflow
        except ImportError:
            raise ConfigError(
                "track.mlflow needs MLflow: pip install 'kdistill[mlflow]' (mlflow-skinny, sqlalchemy, alembic)"
            ) from None
        self.mlflow = mlflow
        self.id_file = run_path / "mlflow_run_id"
        uri = config.track.mlflow_tracking_uri or f"sqlite:///{Path(config.output_dir).resolve() / 'mlflow.db'}"
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(config.track.mlflow_experiment)

    def start(self, config: Config) -> None:
        run_id = self.id_file.read_text().strip() if self.id_file.exists() else None
        run = self.mlflow.start_run(run_id=run_id, run_name=None if run_id else config.name)
        if run_id is None:
            self.id_file.write_text(run.info.run_id)
            self.mlflow.log_params({k: str(v)[:500] for k, v in flatten(to_dict(config)).items()})
            self.mlflow.set_tags({"kdistill.method": config.method.name, "kdistill.run_dir": str(self.id_file.parent)})

    def log(self, record: dict[str, Any]) -> None:
        self.mlflow.log_metrics(numeric_metrics(record), step=record["epoch"])

    def finish(self, summary: dict[str, Any]) -> None:
        self.mlflow.log_metrics({f"summary.{k}": v for k, v in numeric_metrics(summary).items()})
        self.mlflow.end_run()


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
