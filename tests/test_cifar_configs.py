"""Every shipped CIFAR-100 config runs and learns: teachers, student baselines, each distillation method and the
multi-teacher forms run end to end on a tiny CIFAR-100 written in the real pickle format, and a few steps of
the config's own method and optimizer lower its loss on a fixed batch. (The full 240-epoch recipes are GPU
work; this checks the configs, not their accuracy.)"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from kdistill.config import Config, load_config, replace
from kdistill.contracts import DataInfo
from kdistill.data import build_data, make_loader
from kdistill.engine.builders import build_method, resolve_architectures
from kdistill.engine.loop import fit
from kdistill.engine.optim import build_optimizer

from helpers import write_cifar

CONFIGS = sorted((Path(__file__).parent.parent / "configs" / "cifar100").glob("*.yaml"))
TEACHER_CONFIGS = [
    p
    for p in CONFIGS
    if p.name in ("ce_resnet32x4.yaml", "ce_wrn_40_2.yaml", "ce_resnet38x2.yaml", "ce_resnet110x2.yaml")
]
SMOKE = [
    "train.epochs=1",
    "train.max_steps_per_epoch=2",
    "data.batch_size=8",
    "data.eval_batch_size=16",
    "data.num_workers=0",
    "train.progress=false",
    "output_dir=runs",
]


@pytest.fixture(scope="module")
def cifar_workspace(tmp_path_factory):
    """A directory with a tiny CIFAR-100 and the teacher runs the configs name (runs/cifar100_ce_*)."""
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root / "data", "cifar100", train_per_batch=24, test_count=16)
    cwd = Path.cwd()
    try:
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


def fixed_batch_losses(config: Config, steps: int = 5) -> tuple[float, float]:
    """The method's total loss on one fixed training batch before and after ``steps`` optimisation steps on it,
    with the config's optimizer at its learning rate (no schedule: warmups would hold it at zero)."""
    torch.manual_seed(0)
    data = build_data(config.data, config.seed)
    info = DataInfo(data.num_classes, data.input_shape, len(data.train), 8)
    method = build_method(resolve_architectures(config), info)
    batch = next(iter(make_loader(data.train, 8, False, config.seed)))
    optimizer = build_optimizer(method.trainable_parameters(), config.optim)
    method.train()

    def loss() -> torch.Tensor:
        augmented = method.augment_batch(batch, torch.Generator().manual_seed(0))  # the same view every time
        return method.training_step(augmented).loss

    before = loss().item()
    for _ in range(steps):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    return before, loss().item()


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_cifar100_config_learns_a_fixed_batch(path, cifar_workspace, monkeypatch):
    monkeypatch.chdir(cifar_workspace)
    config = replace(load_config(path), [*SMOKE, f"data.root={cifar_workspace / 'data'}"])
    before, after = fixed_batch_losses(config)
    assert after < before, f"{path.name}: loss {before:.4f} -> {after:.4f} after 5 steps on one batch"
