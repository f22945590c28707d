"""Optional experiment trackers (TensorBoard, MLflow) fed from the run directory's records, a sweep's MLflow parent
run, and the readers of run directories (which ``kdistill.engine.run_dir`` writes)."""

from kdistill.engine.run_dir import RunDir, read_metrics, read_summary
from kdistill.track.mlflow_runs import default_tracking_uri, finish_parent_run, run_params, start_parent_run
from kdistill.track.sinks import MLflowSink, TensorBoardSink, build_sinks

__all__ = [
    "MLflowSink",
    "RunDir",
    "TensorBoardSink",
    "build_sinks",
    "default_tracking_uri",
    "finish_parent_run",
    "read_metrics",
    "read_summary",
    "run_params",
    "start_parent_run",
]
