"""Checkpoints written by peers' training scripts load into our zoo models and give the source model's logits.

The files are saved with ``torch.save`` in exactly the layouts the peers write:

- RepDistiller ``train_teacher.py``: ``<model>_best.pth`` = {epoch, model, best_acc, optimizer},
  ``ckpt_epoch_<N>.pth`` = {epoch, model, accuracy, optimizer}, ``<model>_last.pth`` = {opt (its
  ``argparse.Namespace``), model, optimizer}; accuracies are 0-d tensors (``AverageMeter`` of ``accuracy()``).
- mdistiller ``Trainer``: a DataParallel-wrapped distiller saved to ``latest`` / ``best`` / ``epoch_<N>`` (no
  suffix) as {epoch, model: {module.student.*, module.teacher.*}, optimizer, best_acc}.
"""

from __future__ import annotations

import argparse
import copy
import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from kdistill.config import ModelConfig
from kdistill.contracts import CheckpointError
from kdistill.models import build_model
from kdistill.models.loading import load_weights, read_checkpoint

SHAPE = (3, 32, 32)


def source_model(seed: int) -> nn.Module:
    """A resnet8 with seeded weights and non-trivial BatchNorm statistics, so buffers must load too."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(name="resnet8"), 10, SHAPE)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def sgd_state(model: nn.Module) -> dict:
    """The optimizer state RepDistiller / mdistiller save: SGD with momentum after one step (on a copy of ``model``)."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model(torch.randn(2, *SHAPE)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    return optimizer.state_dict()


def repdistiller_options() -> argparse.Namespace:
    """``opt`` as RepDistiller's train_teacher.py parse_option() leaves it."""
    name = "resnet8_cifar100_lr_0.05_decay_0.0005_trial_0"
    return argparse.Namespace(
        print_freq=100, tb_freq=500, save_freq=40, batch_size=64, num_workers=8, epochs=240, learning_rate=0.05,
        lr_decay_epochs=[150, 180, 210], lr_decay_rate=0.1, weight_decay=5e-4, momentum=0.9, model="resnet8",
        dataset="cifar100", trial=0, model_path="./save/models", tb_path="./save/tensorboard", model_name=name,
        tb_folder=f"./save/tensorboard/{name}", save_folder=f"./save/models/{name}",
    )  # fmt: skip


def repdistiller_file(folder: Path, kind: str, model: nn.Module) -> Path:
    accuracy = torch.tensor(71.25)
    if kind == "best":
        state = {"epoch": 238, "model": model.state_dict(), "best_acc": accuracy, "optimizer": sgd_state(model)}
        path = folder / "resnet8_best.pth"
    elif kind == "ckpt_epoch":
        state = {"epoch": 240, "model": model.state_dict(), "accuracy": accuracy, "optimizer": sgd_state(model)}
        path = folder / "ckpt_epoch_240.pth"
    else:
        state = {"opt": repdistiller_options(), "model": model.state_dict(), "optimizer": sgd_state(model)}
        path = folder / "resnet8_last.pth"
    torch.save(state, path)
    return path


class Distiller(nn.Module):
    """mdistiller's Distiller: the student and the teacher as submodules."""

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        super().__init__()
        self.student, self.teacher = student, teacher


def mdistiller_file(folder: Path, student: nn.Module, teacher: nn.Module) -> Path:
    distiller = nn.DataParallel(Distiller(student, teacher))  # keys module.student.* / module.teacher.*
    state = {
        "epoch": 240,
        "model": distiller.state_dict(),
        "optimizer": sgd_state(student),
        "best_acc": torch.tensor(70.5),
    }
    path = folder / "latest"  # mdistiller's save_checkpoint names files without a suffix
    torch.save(state, path)
    return path


def logits(model: nn.Module) -> torch.Tensor:
    torch.manual_seed(123)
    with torch.no_grad():
        return model.eval()(torch.randn(4, *SHAPE))


def loaded(path: Path, checkpoint_key: str | None = None, where: str = "teacher") -> nn.Module:
    config = ModelConfig(name="resnet8", checkpoint=str(path), checkpoint_key=checkpoint_key)
    return build_model(config, 10, SHAPE, where=where)


@pytest.mark.parametrize("kind", ["best", "ckpt_epoch", "last"])
def test_repdistiller_teacher_files_give_the_source_logits(tmp_path, kind):
    source = source_model(seed=1)
    path = repdistiller_file(tmp_path, kind, source)
    assert torch.equal(logits(loaded(path)), logits(source))


def test_peer_globals_are_allowed_only_while_kdistill_reads(tmp_path):
    path = repdistiller_file(tmp_path, "last", source_model(seed=1))
    assert isinstance(read_checkpoint(path)["opt"], argparse.Namespace)
    with pytest.raises(pickle.UnpicklingError, match="argparse.Namespace"):  # not registered for the whole process
        torch.load(path, weights_only=True)


def test_mdistiller_distiller_checkpoint_gives_student_or_teacher_by_checkpoint_key(tmp_path):
    student, teacher = source_model(seed=2), source_model(seed=3)
    path = mdistiller_file(tmp_path, student, teacher)
    assert torch.equal(logits(loaded(path, "module.student.", where="student")), logits(student))
    assert torch.equal(logits(loaded(path, "module.teacher.")), logits(teacher))
    assert not torch.equal(logits(student), logits(teacher))


def test_composite_checkpoint_without_checkpoint_key_lists_its_prefixes(tmp_path):
    path = mdistiller_file(tmp_path, source_model(seed=2), source_model(seed=3))
    keys = len(source_model(seed=2).state_dict())
    with pytest.raises(CheckpointError) as error:
        loaded(path)
    message = str(error.value)
    assert f"module.student. ({keys} keys), module.teacher. ({keys} keys)" in message
    assert "teacher.checkpoint_key" in message and "prefix is stripped" in message
    with pytest.raises(CheckpointError, match=r"'module.stu\.'.*its key prefixes: module\.student\. .*module\.teacher"):
        loaded(path, "module.stu.")


def test_dataparallel_prefix_is_stripped_only_when_that_makes_the_keys_fit(tmp_path):
    source = source_model(seed=4)
    path = tmp_path / "dataparallel.pth"
    torch.save({"model": nn.DataParallel(source).state_dict()}, path)  # keys module.*
    assert torch.equal(logits(loaded(path)), logits(source))
    wrapped = nn.DataParallel(source_model(seed=5))  # its own keys start with module.: kept as they are
    load_weights(wrapped, path)
    assert torch.equal(logits(wrapped.module), logits(source))


class RunsShellCommand:
    """A hostile object: unpickling it calls ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_checkpoint_with_a_hostile_global_is_refused_and_runs_nothing(tmp_path, zip_format):
    marker = tmp_path / "code-ran"
    path = tmp_path / "resnet8_last.pth"
    state = {"opt": RunsShellCommand(f"touch {marker}"), "model": source_model(seed=1).state_dict()}
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError) as error:
        loaded(path)
    message = str(error.value)
    assert f"{os.system.__module__}.system" in message and "refused for safety" in message
    assert "plain state dict" in message and "corrupt" not in message
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the file is a live exploit: an unrestricted load runs the command
    assert marker.exists()
