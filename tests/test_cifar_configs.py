"""Every shipped CIFAR-100 config runs: teachers, student baselines, each distillation method and the
multi-teacher forms take real optimisation steps on a tiny CIFAR-100 written in the real pickle format.
(The full 240-epoch recipes are GPU work; this checks the configs, not their accuracy.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kdistill.config import load_config, replace
from kdistill.engine.loop import fit

from test_datasets import write_cifar

CONFIGS = sorted((Path(__file__).parent.parent / "configs" / "cifar100").glob("*.yaml"))
TEACHER_CONFIGS = [p for p in CONFIGS if p.name in ("ce_resnet32x4.yaml", "ce_wrn_40_2.yaml", "ce_resnet38x2.yaml", "ce_resnet110x2.yaml")]
SMOKE = ["train.epochs=1", "train.max_steps_per_epoch=2", "data.batch_size=8", "data.eval_batch_size=16",
         "data.num_workers=0", "train.progress=false", "output_dir=runs"]


@pytest.fixture(scope="module")
def cifar_workspace(tmp_path_factory):
    """A directory with a tiny CIFAR-100 and the teacher runs the configs name (runs/cifar100_ce_*)."""
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root / "data", "cifar100", train_per_batch=24, test_count=16)
    cwd = Path.cwd()
    try:
        import os

        os.chdir(root)
        for path in TEACHER_CONFIGS:
            config = replace(load_config(path), [*SMOKE, f"data.root={root / 'data'}"])
            fit(config, log=lambda _: None)
            for seed in range(3):  # the multi-teacher configs use three seeds of each teacher
                shutil.copytree(root / "runs" / config.name, root / "runs" / f"{config.name}-seed{seed}")
    finally:
        os.chdir(cwd)
    return root


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_cifar100_config_takes_real_steps(path, cifar_workspace, monkeypatch):
    monkeypatch.chdir(cifar_workspace)
    config = replace(load_config(path), [*SMOKE, f"data.root={cifar_workspace / 'data'}", f"name=smoke_{path.stem}"])
    summary = fit(config, overwrite=True, log=lambda _: None)
    assert summary["method"] == config.method.name
    assert 0.0 <= summary["final_test_acc"] <= 100.0
    assert (cifar_workspace / "runs" / f"smoke_{path.stem}" / "student.pt").is_file()
    if config.teachers():
        assert summary["teacher_test_acc"] is not None and summary["params_deployed"] > 0
