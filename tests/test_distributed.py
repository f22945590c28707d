"""Two processes under torchrun (gloo, CPU, through DistributedDataParallel) train exactly like one process with the
summed batch; only rank 0 writes the run directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdistill.api import fit
from kdistill.config import load_config
from kdistill.contracts import ConfigError
from kdistill.models.loading import read_checkpoint

COMMON = ["data.name=digits", "train.epochs=2", "train.progress=false", "optim.lr=0.1"]
CASES = {
    # label training of an MLP, and KD from a frozen CNN teacher into a CNN (no BatchNorm: its batch statistics are
    # per rank unless train.sync_batchnorm, which PyTorch runs on GPUs only)
    "ce": ["student.name=mlp"],
    "kd": [
        "method.name=kd",
        "student.name=cnn",
        "student.kwargs={channels: [8, 16], padding: 1, head: avg}",
        "train.teacher_store=false",
    ],
}


def _sets(values: list[str]) -> list[str]:
    return [arg for value in values for arg in ("--set", value)]


def _run(command: list[str], values: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    done = subprocess.run(
        [*command, "-m", "kdistill.cli", "train" if "method.name=kd" not in values else "distill", *_sets(values)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_ranks_match_one_process_with_the_global_batch(tmp_path, case, digits_teacher):
    values = [*COMMON, *CASES[case], f"output_dir={tmp_path}"]
    if case == "kd":
        values.append(f"teacher.checkpoint={digits_teacher}")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    _run(torchrun, [*values, "name=ddp", "data.batch_size=32"])
    _run([sys.executable], [*values, "name=single", "data.batch_size=64"])
    ddp = read_checkpoint(tmp_path / "ddp" / "last.pt")["method_state"]
    single = read_checkpoint(tmp_path / "single" / "last.pt")["method_state"]
    assert ddp.keys() == single.keys()
    for key in single:
        if key.endswith("num_batches_tracked"):
            continue
        assert torch.allclose(ddp[key].float(), single[key].float(), atol=1e-5), key
    # one writer: the DDP run wrote one run directory with the same files as the single process, nothing else
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "single"]
    ddp_files = sorted(str(p.relative_to(tmp_path / "ddp")) for p in (tmp_path / "ddp").rglob("*"))
    single_files = sorted(str(p.relative_to(tmp_path / "single")) for p in (tmp_path / "single").rglob("*"))
    assert ddp_files == single_files
    assert len((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()) == 2  # one line per epoch, not per rank


def test_sync_batchnorm_off_cuda_is_refused_before_training(tmp_path):
    config = load_config(overrides=[*COMMON, "student.name=mlp", f"output_dir={tmp_path}", "train.sync_batchnorm=true"])
    with pytest.raises(ConfigError, match="SyncBatchNorm runs on GPUs only"):
        fit(config, log=lambda _: None)
    assert not list(tmp_path.iterdir())
