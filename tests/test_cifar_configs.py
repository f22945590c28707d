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
from kdistill.contracts import DataInfo, TrainingDivergedError
from kdistill.data import build_data, make_loader
from kdistill.engine.builders import build_method, resolve_architectures
from kdistill.engine.export import load_student
from kdistill.engine.loop import fit
from kdistill.engine.optim import build_optimizer
from kdistill.models.loading import read_checkpoint
from kdistill.runtime.io import atomic_save

from helpers import write_cifar

CONFIGS = sorted((Path(__file__).parent.parent / "configs" / "cifar100").glob("*.yaml"))
TEACHER_CONFIGS = [
    p
    for p in CONFIGS
    if p.name in ("ce_resnet32x4.yaml", "ce_wrn_40_2.yaml", "ce_resnet38x2.yaml", "ce_resnet110x2.yaml")
]


def student_runs(paths: list[Path]) -> list[Path]:
    """The configs whose runs other configs load as their student (``student.checkpoint``: a run directory or a file
    in one, e.g. simkd_sequential's frozen encoder from a SimKD run's student.pt), found by the run name."""
    configs = {path: load_config(path) for path in paths}
    by_name = {config.name: path for path, config in configs.items()}
    needed = set()
    for config in configs.values():
        checkpoint = config.student.checkpoint
        if checkpoint:
            run_dir = Path(checkpoint).parent if Path(checkpoint).suffix else Path(checkpoint)
            needed.add(run_dir.name)
    missing = sorted(needed - by_name.keys())
    assert not missing, f"student checkpoints of runs no config here writes: {missing}"
    return [by_name[name] for name in sorted(needed)]


STUDENT_RUN_CONFIGS = student_runs(CONFIGS)
SMOKE = [
    "train.epochs=1",
    "train.max_steps_per_epoch=2",
    "data.batch_size=8",
    "data.eval_batch_size=16",
    "data.num_workers=0",
    "train.progress=false",
    "output_dir=runs",
]
# images a step of each config's own checks (its end-to-end run and the fixed batch); the teachers' smoke runs in
# the workspace keep SMOKE's 8. The checks are of wiring and gradients, not statistics, and the configs' deep models
# cost their compute per image
CHECK_BATCH = 4
# per method, the method's own long loops cut as the train ones above: CMI runs 200 generator steps (each a teacher
# forward and backward) at every synthesis round, minutes on a CPU per round
SMOKE_METHOD = {"cmi": ["method.generator_steps=2"]}


def smoke_config(path: Path, *overrides: str) -> Config:
    """The config at ``path`` cut to a smoke run (:data:`SMOKE`, :data:`SMOKE_METHOD`), then ``overrides``."""
    config = load_config(path)
    return replace(config, [*SMOKE, *SMOKE_METHOD.get(config.method.name, []), *overrides])


def recalibrate_batch_norm(student_file: Path, config: Config) -> None:
    """Give a 2-step teacher BN statistics that match its activations (cumulative averages over the tiny train
    set), as a trained teacher has: otherwise its eval-mode features are off by orders of magnitude."""
    model, _, _ = load_student(student_file)
    data = build_data(config.data, config.seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative moving average
    model.train()
    with torch.no_grad():
        for batch in make_loader(data.train, 32, False, config.seed):
            model(batch.inputs)
    payload = read_checkpoint(student_file)
    payload["state_dict"] = model.state_dict()
    atomic_save(payload, student_file)


@pytest.fixture(scope="module")
def cifar_workspace(tmp_path_factory):
    """A directory with a tiny CIFAR-100, the teacher runs the configs name (runs/cifar100_ce_*) and, after them, the
    smoke runs of the configs whose students others load (runs/cifar100_simkd_*: simkd_sequential's encoders)."""
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root / "data", "cifar100", train_per_batch=24, test_count=16)
    cwd = Path.cwd()
    try:
        os.chdir(root)
        for path in TEACHER_CONFIGS:
            config = smoke_config(path, f"data.root={root / 'data'}")
            fit(config, log=lambda _: None)
            recalibrate_batch_norm(root / "runs" / config.name / "student.pt", config)
            for seed in range(3):  # the multi-teacher configs use three seeds of each teacher
                shutil.copytree(root / "runs" / config.name, root / "runs" / f"{config.name}-seed{seed}")
        for path in STUDENT_RUN_CONFIGS:
            config = smoke_config(path, f"data.root={root / 'data'}")
            fit(config, log=lambda _: None)
            assert (root / "runs" / config.name / "student.pt").is_file(), config.name
    finally:
        os.chdir(cwd)
    return root


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_cifar100_config_takes_real_steps(path, cifar_workspace, monkeypatch):
    """The config builds, trains and evaluates end to end. Two steps leave an untrained deep student (resnet110,
    SimKD onto a 2-step teacher's head) with BN statistics far from its activations, so its evaluation can
    overflow: the trainer must then stop cleanly as divergence and save nothing from that state."""
    monkeypatch.chdir(cifar_workspace)
    config = smoke_config(
        path, f"data.root={cifar_workspace / 'data'}", f"name=smoke_{path.stem}", f"data.batch_size={CHECK_BATCH}"
    )
    run = cifar_workspace / "runs" / f"smoke_{path.stem}"
    try:
        summary = fit(config, overwrite=True, log=lambda _: None)
    except TrainingDivergedError as error:
        assert "evaluation on" in str(error) or "NaN or infinite at step" in str(error), error
        assert not (run / "student.pt").exists() and not (run / "last.pt").exists()
        return
    assert summary["method"] == config.method.name
    assert 0.0 <= summary["final_test_acc"] <= 100.0
    assert (run / "student.pt").is_file()
    if config.teachers():
        assert summary["teacher_test_acc"] is not None and summary["params_deployed"] > 0


def fixed_batch_losses(config: Config, lr_scale: float) -> tuple[float, float]:
    """The method's total loss on one fixed training batch before and after one optimisation step on it, with the
    config's optimizer (its type, momentum, weight decay) at a small fraction of its learning rate: a correct
    gradient must then lower the loss (first order). The batch is augmented once (CMI's synthesis trains its
    generator as it augments), and buffers (BN statistics, CRD's memory) and dropout masks are reset before every
    evaluation, so the parameter step is the only change."""
    torch.manual_seed(0)
    data = build_data(config.data, config.seed)
    info = DataInfo(data.num_classes, data.input_shape, len(data.train), CHECK_BATCH)
    method = build_method(resolve_architectures(config), info)
    batch = next(iter(make_loader(data.train, CHECK_BATCH, False, config.seed)))
    small = replace(config, [f"optim.lr={config.optim.lr * lr_scale}"])
    optimizer = build_optimizer(method.trainable_parameters(), small.optim)
    buffers = {name: value.clone() for name, value in method.named_buffers()}
    method.train()

    torch.manual_seed(1)
    augmented = method.augment_batch(batch, torch.Generator().manual_seed(0))  # the same view every time

    def loss() -> torch.Tensor:
        with torch.no_grad():
            for name, value in method.named_buffers():
                value.copy_(buffers[name])
        torch.manual_seed(1)  # the same dropout masks every time
        return method.training_step(augmented).loss

    before = loss().item()
    optimizer.zero_grad()
    loss().backward()
    optimizer.step()
    return before, loss().item()


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_cifar100_config_learns_a_fixed_batch(path, cifar_workspace, monkeypatch):
    monkeypatch.chdir(cifar_workspace)
    config = smoke_config(path, f"data.root={cifar_workspace / 'data'}")
    # first order: a small enough step along a correct gradient lowers the loss. A step of 1e-3 x lr can overshoot
    # where the loss is sharp or kinked (KDSVD's SVD, CMI near a zero loss, depending on the teachers' two steps), so
    # smaller steps are tried after it; a zero or wrong-signed gradient fails at every size
    tried = []
    for lr_scale in (1e-3, 1e-4, 1e-5):
        before, after = fixed_batch_losses(config, lr_scale)
        tried.append(f"{before:.6f} -> {after:.6f} at {lr_scale:g} x lr")
        if after < before:
            return
    pytest.fail(f"{path.name}: one small step on one batch does not lower the loss: {'; '.join(tried)}")
