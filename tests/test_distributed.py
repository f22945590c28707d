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


# --standalone: torchrun's rendezvous binds port 0, so the OS hands each launch a free port (no fixed port that two
# tests, or two test runs on one machine, could both want)
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


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
    _run(TORCHRUN, [*values, "name=ddp", "data.batch_size=32"])
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


EXIT_PROBE = """
import atexit, sys
import torch
import torch.distributed as dist
from kdistill.runtime.distributed import init_from_environment

# atexit runs its functions last-registered first: this one, registered before kdistill joins the group, runs after
# whatever kdistill registers, and reports whether the group was left
atexit.register(lambda: print(f"rank {RANK} group still joined at exit: {dist.is_initialized()}", flush=True))
init_from_environment(torch.device("cpu"))
RANK = dist.get_rank()
dist.all_reduce(torch.ones(8))
if sys.argv[1] == "error":
    raise RuntimeError("a failure after joining the group")
"""


@pytest.mark.parametrize("way_out", ["end", "error"])
def test_every_rank_leaves_the_process_group_before_the_interpreter_exits(tmp_path, way_out):
    script = tmp_path / "probe.py"
    script.write_text(EXIT_PROBE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    done = subprocess.run(
        [*TORCHRUN, str(script), way_out], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert (done.returncode == 0) == (way_out == "end"), done.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank} group still joined at exit: False" in done.stdout, done.stdout + done.stderr[-3000:]
