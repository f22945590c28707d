"""Shared fixtures: small real-data configs (scikit-learn digits) and a trained digits teacher."""

from __future__ import annotations

import os

import pytest
import torch

from kdistill.engine.loop import fit

from helpers import digits_config


def torch_threads() -> int:
    """Torch CPU threads for this test process: at most 2, and the cores shared among pytest-xdist's workers (two
    workers on two cores get one each: with two each, the oversubscribed OpenMP threads spin against each other and
    the suite ran over twice as long)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, min(2, torch.get_num_threads(), (os.cpu_count() or 1) // workers))


torch.set_num_threads(torch_threads())
# the kdistill processes the tests start (CLI runs, sweep workers, torchrun ranks) inherit the same count
os.environ["OMP_NUM_THREADS"] = str(torch.get_num_threads())


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory) -> str:
    """A CNN trained on digits for a few epochs; returns its run directory."""
    root = tmp_path_factory.mktemp("teacher")
    config = digits_config(
        root,
        "teacher",
        "student.name=cnn",
        "student.kwargs={channels: [16, 32], hidden: 64, padding: 1}",
        "train.epochs=8",
    )
    summary = fit(config, log=lambda _: None)
    assert summary["final_test_acc"] > 85.0, summary
    return summary["run_dir"]
