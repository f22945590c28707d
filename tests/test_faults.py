"""Faults and bad input lose nothing (issue 13): run names stay inside output_dir, kills and signals resume to
identical results, a full disk is reported and keeps the old checkpoint, resume refuses what does not fit,
divergence is caught where it happens."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdistill.config import replace
from kdistill.contracts import ConfigError, DiskFullError, TrainingDivergedError
from kdistill.engine.builders import preflight
from kdistill.engine.loop import fit
from kdistill.engine.run_dir import RUN_MARKER, recipe_differences
from kdistill.methods.ce import CrossEntropy
from kdistill.models.loading import read_checkpoint
from kdistill.runtime.io import atomic_save
from kdistill.track import read_metrics, read_summary

from helpers import digits_config, digits_overrides

QUIET = {"log": lambda _: None}
LONG = ["train.epochs=3", "data.batch_size=16", "optim.lr=0.05"]  # 3 x 68 steps: room to be interrupted


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "kdistill.cli", *args]


def digits_args(tmp_path: Path, name: str, *extra: str) -> list[str]:
    """CLI --set arguments equal to ``digits_config(tmp_path, name, *extra)``."""
    return [part for value in digits_overrides(tmp_path, name, *extra) for part in ("--set", value)]


def same_weights(a: Path, b: Path) -> bool:
    first, second = read_checkpoint(a / "last.pt")["method_state"], read_checkpoint(b / "last.pt")["method_state"]
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def comparable_metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("_time_s")} for r in read_metrics(run)]


def comparable_summary(run: Path) -> dict:
    return {k: v for k, v in read_summary(run).items() if k not in ("wall_time_s", "run_dir", "name")}


# ----------------------------------------------------------------------------- 1. names and --overwrite


@pytest.mark.parametrize("name", ["", "../outside", "/tmp/absolute", ".", "a/b", "x" * 300])
def test_run_names_that_leave_output_dir_are_refused_and_nothing_is_deleted(tmp_path, name):
    precious = tmp_path / "outside"
    precious.mkdir()
    (precious / "keep.txt").write_text("data")
    output_dir = tmp_path / "runs"
    output_dir.mkdir()
    (output_dir / "other_run.txt").write_text("data")
    config = digits_config(output_dir, "placeholder", "train.epochs=1")
    config = replace(config, [f"name={json.dumps(name)}"])
    with pytest.raises(ConfigError, match="name"):
        fit(config, overwrite=True, **QUIET)
    assert (precious / "keep.txt").read_text() == "data" and (output_dir / "other_run.txt").exists()


def test_overwrite_removes_only_a_directory_kdistill_made(tmp_path):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match="not a kdistill run directory"):
        fit(digits_config(tmp_path, "notes", "train.epochs=1"), overwrite=True, **QUIET)
    assert (foreign / "thesis.tex").exists()
    fit(digits_config(tmp_path, "run", "train.epochs=1"), **QUIET)
    assert (tmp_path / "run" / RUN_MARKER).exists()
    fit(digits_config(tmp_path, "run", "train.epochs=1"), overwrite=True, **QUIET)  # its own run: replaced


def test_output_dir_that_is_a_file_is_reported(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        fit(digits_config(tmp_path / "file", "run", "train.epochs=1"), **QUIET)


def test_the_write_check_agrees_with_the_file_system(tmp_path):
    """A directory without write permission: refused where the OS refuses (a user), accepted where it lets the
    process write (root writes past permission bits); either way the check leaves nothing behind."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        config = digits_config(locked / "runs", "run", "train.epochs=1")
        refused = False
        try:
            preflight(config)
        except ConfigError as error:
            assert f"output_dir='{locked}/runs' cannot be written: {locked} refuses new entries" in str(error)
            refused = True
        assert list(locked.iterdir()) == []
        try:
            (locked / "runs").mkdir()
            writable = True
        except PermissionError:
            writable = False
        assert refused is not writable
    finally:
        locked.chmod(0o700)


def test_a_run_dir_that_cannot_be_made_is_refused_before_anything_is_built(tmp_path):
    with pytest.raises(ConfigError, match="output_dir='/proc/kdistill_x' cannot be written"):
        fit(digits_config(Path("/proc/kdistill_x"), "run", "train.epochs=1"), **QUIET)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "taken").write_text("")  # the run directory's own path is a file
    with pytest.raises(ConfigError, match=r"is a file, not a directory; choose another run name \(--set name=...\)"):
        fit(digits_config(tmp_path / "runs", "taken", "train.epochs=1"), **QUIET)


# ----------------------------------------------------------------------------- 2, 6. resume edge cases


def test_resume_of_a_finished_run_keeps_its_summary(tmp_path):
    config = digits_config(tmp_path, "done", "train.epochs=2")
    first = fit(config, **QUIET)
    again = fit(config, resume=True, **QUIET)
    assert again == first == read_summary(tmp_path / "done")
    assert {"final_val_acc", "final_test_acc", "final_test_top5", "final_test_loss"} <= set(again)
    (tmp_path / "done" / "summary.json").unlink()  # killed after last.pt, before the summary
    rebuilt = fit(config, resume=True, **QUIET)
    assert rebuilt["final_test_acc"] == first["final_test_acc"] and len(read_metrics(tmp_path / "done")) == 2


def test_restart_before_the_first_checkpoint_does_not_repeat_epochs(tmp_path):
    config = digits_config(tmp_path, "early", "train.epochs=3", "train.checkpoint_every=5")
    fit(config, stop_after_epochs=2, **QUIET)  # two epochs logged, no last.pt yet (checkpoint_every=5)
    (tmp_path / "early" / "last.pt").unlink(missing_ok=True)
    fit(config, resume=True, **QUIET)
    assert [r["epoch"] for r in read_metrics(tmp_path / "early")] == [1, 2, 3]


def test_resume_refuses_a_checkpoint_of_another_recipe_or_architecture(tmp_path):
    config = digits_config(tmp_path, "recipe", "train.epochs=2")
    fit(config, stop_after_epochs=1, **QUIET)
    (tmp_path / "recipe" / "config.yaml").write_text("\x00\x01 not yaml: [")  # garbage: the checkpoint decides
    with pytest.raises(ConfigError, match=r"optim.lr: 0.1 -> 0.2"):
        fit(replace(config, ["optim.lr=0.2"]), resume=True, **QUIET)
    other = digits_config(tmp_path, "arch", "train.epochs=2")
    fit(other, stop_after_epochs=1, **QUIET)
    checkpoint = read_checkpoint(tmp_path / "arch" / "last.pt")
    wider = replace(other, ["student.kwargs={hidden: [48]}"])
    checkpoint["config"] = json.loads(json.dumps(checkpoint["config"]))
    checkpoint["config"]["student"]["kwargs"] = {"hidden": [48]}  # a last.pt whose record claims the new width
    atomic_save(checkpoint, tmp_path / "arch" / "last.pt")
    (tmp_path / "arch" / "config.yaml").unlink()
    with pytest.raises(ConfigError, match="does not fit the configured models"):
        fit(wider, resume=True, **QUIET)


def test_a_nan_in_a_recorded_config_does_not_block_resume_forever():
    nan = float("nan")
    saved = {"optim": {"lr": nan, "momentum": 0.9}, "track": {"mlflow": False}}
    assert recipe_differences(saved, {"optim": {"lr": nan, "momentum": 0.9}, "track": {"mlflow": True}}) == []
    assert recipe_differences(saved, {"optim": {"lr": 0.1, "momentum": 0.9}, "track": {}}) == ["optim.lr: nan -> 0.1"]


def test_a_metrics_line_cut_short_by_a_kill_is_skipped(tmp_path):
    config = digits_config(tmp_path, "torn", "train.epochs=2")
    fit(config, stop_after_epochs=1, **QUIET)
    with open(tmp_path / "torn" / "metrics.jsonl", "a") as handle:
        handle.write('{"epoch": 2, "train_lo')  # the process died mid-line
    fit(config, resume=True, **QUIET)
    assert [r["epoch"] for r in read_metrics(tmp_path / "torn")] == [1, 2]


# ----------------------------------------------------------------------------- 4. full disk


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 600 kB tmpfs: real ENOSPC from the kernel (the tests run as root here and in CI)."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:  # no mount permission: inject the kernel's error instead
        yield None
        return
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_reported_and_the_old_checkpoint_kept(tiny_filesystem, tmp_path, monkeypatch):
    target = (tiny_filesystem or tmp_path) / "last.pt"
    atomic_save({"weights": torch.ones(1000)}, target)
    before = target.read_bytes()
    if tiny_filesystem is None:
        real_save = torch.save

        def failing_save(obj, stream, *args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(DiskFullError, match=r"no space left on the device writing .*last.pt: it needs about 4.0 MB"):
        atomic_save({"weights": torch.ones(1_000_000)}, target)  # 4 MB into 600 kB
    assert target.read_bytes() == before, "the previous checkpoint must survive"
    assert [p.name for p in target.parent.iterdir()] == ["last.pt"], "no temp file is left behind"
    if tiny_filesystem is None:
        monkeypatch.setattr(torch, "save", real_save)


def test_stale_temp_files_of_killed_writes_are_removed(tmp_path):
    config = digits_config(tmp_path, "stale", "train.epochs=2")
    fit(config, stop_after_epochs=1, **QUIET)
    stale = tmp_path / "stale" / ".last.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    fit(config, resume=True, **QUIET)
    assert not stale.exists()


# ----------------------------------------------------------------------------- 5. signals and kills


def test_sigterm_writes_a_checkpoint_and_resume_continues_from_that_step(tmp_path):
    recipe = [*LONG, "train.epochs=8"]  # long enough that the signal lands inside an epoch on a fast machine
    straight = tmp_path / "straight"
    fit(digits_config(tmp_path, "straight", *recipe), **QUIET)
    process = subprocess.Popen(
        cli("train", *digits_args(tmp_path, "stopped", *recipe)), stderr=subprocess.PIPE, text=True
    )
    metrics = tmp_path / "stopped" / "metrics.jsonl"
    deadline = time.time() + 120
    while not metrics.exists() and time.time() < deadline:  # epoch 1 is done: stop it inside epoch 2
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, error = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, error
    assert "stopped by SIGTERM after step" in error and "--resume" in error
    checkpoint = read_checkpoint(tmp_path / "stopped" / "last.pt")
    assert checkpoint["epoch"] >= 1 and checkpoint["step_in_epoch"] > 0, "a mid-epoch checkpoint was written"
    resumed = subprocess.run(cli("train", *digits_args(tmp_path, "stopped", *recipe), "--resume"), capture_output=True)
    assert resumed.returncode == 0, resumed.stderr
    assert same_weights(straight, tmp_path / "stopped")
    assert comparable_metrics(straight) == comparable_metrics(tmp_path / "stopped")


def test_sigkill_at_random_moments_with_step_checkpoints_resumes_to_identical_results(tmp_path):
    """Killed 3 times at random moments (mid-epoch, possibly mid-write), resumed each time: same weights, summary
    and metrics as an uninterrupted run."""
    extra = [
        *LONG,
        "train.checkpoint_every_steps=7",
        "data.augment=crop_flip",
        "student.kwargs={hidden: [32], dropout: 0.2}",
    ]
    fit(digits_config(tmp_path, "straight", *extra), **QUIET)
    command = cli("train", *digits_args(tmp_path, "killed", *extra))
    rng = random.Random(0)
    for attempt in range(3):
        process = subprocess.Popen([*command, *(["--resume"] if attempt else [])], stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(4.0, 9.0))  # interpreter start is ~3 s here; training runs ~10 s
        process.kill()
        process.wait()
    finished = subprocess.run([*command, "--resume"], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert same_weights(tmp_path / "straight", tmp_path / "killed")
    assert comparable_metrics(tmp_path / "straight") == comparable_metrics(tmp_path / "killed")
    assert comparable_summary(tmp_path / "straight") == comparable_summary(tmp_path / "killed")


# ----------------------------------------------------------------------------- 7. divergence


def diverging_from_step(monkeypatch, first_bad_call: int, every: bool = True) -> None:
    original_step = CrossEntropy.training_step
    calls = {"n": 0}

    def step(self, batch):
        calls["n"] += 1
        output = original_step(self, batch)
        if calls["n"] >= first_bad_call and (every or calls["n"] == first_bad_call):
            output.losses["ce"] = output.losses["ce"] * float("nan")
        return output

    monkeypatch.setattr(CrossEntropy, "training_step", step)


def test_divergence_names_epoch_and_step_and_skip_mode_drops_the_step(tmp_path, monkeypatch):
    diverging_from_step(monkeypatch, first_bad_call=22)  # 19 steps per epoch: step 3 of epoch 2
    with pytest.raises(TrainingDivergedError, match=r"step 3 of epoch 2 \(this step's terms: ce=nan"):
        fit(digits_config(tmp_path, "stop"), **QUIET)
    monkeypatch.undo()
    diverging_from_step(monkeypatch, first_bad_call=22, every=False)
    summary = fit(digits_config(tmp_path, "skip", "train.on_nan=skip"), **QUIET)
    assert [r["train_skipped_steps"] for r in read_metrics(tmp_path / "skip")] == [0, 1, 1]
    assert summary["final_test_acc"] > 80.0
    monkeypatch.undo()
    diverging_from_step(monkeypatch, first_bad_call=22)
    with pytest.raises(TrainingDivergedError, match="3 step"):
        fit(digits_config(tmp_path, "toomany", "train.on_nan=skip", "train.max_skipped_steps=3"), **QUIET)


def test_a_non_finite_validation_loss_is_divergence_and_is_not_checkpointed(tmp_path, monkeypatch):
    config = digits_config(tmp_path, "val", "train.epochs=2")
    original_forward = CrossEntropy.forward

    def forward(self, inputs):
        logits = original_forward(self, inputs)
        return logits * float("inf") if not self.training and self.current_epoch == 1 else logits

    monkeypatch.setattr(CrossEntropy, "forward", forward)
    with pytest.raises(TrainingDivergedError, match="evaluation on val after epoch 2"):
        fit(config, **QUIET)
    assert read_checkpoint(tmp_path / "val" / "last.pt")["epoch"] == 1
