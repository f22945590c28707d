"""Optional trackers: TensorBoard scalars and an MLflow run (continued, not duplicated, on resume)."""

from __future__ import annotations

from kdistill.api import fit

from helpers import digits_config


def test_tensorboard_and_mlflow_receive_params_and_per_epoch_metrics(tmp_path):
    import mlflow
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = digits_config(tmp_path, "tracked", "train.epochs=2", "track.tensorboard=true", "track.mlflow=true")
    fit(config, stop_after_epochs=1, log=lambda _: None)
    fit(config, resume=True, log=lambda _: None)

    events = EventAccumulator(str(tmp_path / "tracked" / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("val_acc")] == [1, 2]
    assert "train_ce" in events.Tags()["scalars"]

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kdistill")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, "resume must continue the same MLflow run"
    run = runs[0]
    assert run.data.params["optim.lr"] == "0.1" and run.data.params["method.name"] == "ce"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]
    assert "summary.final_test_acc" in run.data.metrics
    assert run.info.status == "FINISHED"
