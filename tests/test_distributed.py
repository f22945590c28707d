"""Two processes under torchrun (gloo, CPU) train exactly like one process with the summed batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from kdistill.models.loading import read_checkpoint

COMMON = ["data.name=digits", "student.name=mlp", "train.epochs=2", "train.progress=false", "optim.lr=0.1"]


def _sets(values: list[str]) -> list[str]:
    return [arg for value in values for arg in ("--set", value)]


def test_two_ranks_match_one_process_with_the_global_batch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    subprocess.run(
        [
            *torchrun,
            "-m",
            "kdistill.cli",
            "train",
            *_sets([*COMMON, f"output_dir={tmp_path}", "name=ddp", "data.batch_size=32"]),
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "kdistill.cli",
            "train",
            *_sets([*COMMON, f"output_dir={tmp_path}", "name=single", "data.batch_size=64"]),
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    ddp = read_checkpoint(tmp_path / "ddp" / "last.pt")["method_state"]
    single = read_checkpoint(tmp_path / "single" / "last.pt")["method_state"]
    for key in single:
        assert torch.allclose(ddp[key], single[key], atol=1e-5), key
    assert not list((tmp_path / "ddp").glob("*.tmp"))
