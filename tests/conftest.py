"""Shared fixtures: small real-data configs (scikit-learn digits) and a trained digits teacher."""

from __future__ import annotations

import pytest
import torch

from kdistill.config import Config, load_config

torch.set_num_threads(min(2, torch.get_num_threads()))


def digits_config(tmp_path, name: str, *overrides: str) -> Config:
    """A fast real-data run: digits (8x8), SGD, cosine schedule, no progress bars."""
    return load_config(
        overrides=[
            f"name={name}",
            f"output_dir={tmp_path}",
            "data.name=digits",
            "data.batch_size=64",
            "student.name=mlp",
            "student.kwargs={hidden: [32]}",
            "optim.lr=0.1",
            "schedule.name=cosine",
            "train.epochs=3",
            "train.progress=false",
            *overrides,
        ]
    )


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory) -> str:
    """A CNN trained on digits for a few epochs; returns its run directory."""
    from kdistill.engine.loop import fit

    root = tmp_path_factory.mktemp("teacher")
    config = digits_config(
        root, "teacher", "student.name=cnn", "student.kwargs={channels: [16, 32], hidden: 64, padding: 1}", "train.epochs=8"
    )
    summary = fit(config, log=lambda _: None)
    assert summary["final_test_acc"] > 85.0, summary
    return summary["run_dir"]
