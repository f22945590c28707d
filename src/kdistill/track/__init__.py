"""Optional experiment trackers (TensorBoard, MLflow) fed from the run directory's records, and the readers
of run directories (which ``kdistill.engine.run_dir`` writes)."""

from kdistill.engine.run_dir import RunDir, read_metrics, read_summary
from kdistill.track.sinks import MLflowSink, TensorBoardSink, build_sinks

__all__ = ["MLflowSink", "RunDir", "TensorBoardSink", "build_sinks", "read_metrics", "read_summary"]
