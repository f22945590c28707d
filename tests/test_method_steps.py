"""One training step of every registered method on tiny models: the teacher gets no gradient and
does not change, the student (and the method's own modules) do."""

from __future__ import annotations

import pytest
import torch

from kdistill.config import ModelConfig
from kdistill.contracts import Batch, DataInfo
from kdistill.methods import METHODS, Method
from kdistill.models import build_model

INPUT_SHAPE = (1, 16, 16)
INFO = DataInfo(num_classes=5, input_shape=INPUT_SHAPE, num_train=64, batch_size=8)
TEACHER = ModelConfig(name="cnn", kwargs={"channels": [8, 16], "padding": 1, "batch_norm": True, "head": "avg"})
STUDENT = ModelConfig(name="cnn", kwargs={"channels": [4, 8], "padding": 1, "batch_norm": True, "head": "avg"})
# methods that need another kind of student: deit teaches a ViT's distillation token
STUDENTS = {
    "deit": ModelConfig(
        name="vit", kwargs={"patch_size": 4, "depth": 2, "width": 16, "heads": 2, "distillation_token": True}
    )
}


def make_batch(size: int = 8) -> Batch:
    generator = torch.Generator().manual_seed(0)
    return Batch(
        inputs=torch.randn(size, *INPUT_SHAPE, generator=generator),
        targets=torch.randint(0, INFO.num_classes, (size,), generator=generator),
        indices=torch.arange(size),
    )


def fresh_method(name: str) -> Method:
    """``name`` with its default config on freshly seeded TEACHER (when it takes one) and STUDENT (or the method's
    own in STUDENTS), in training mode."""
    torch.manual_seed(0)
    method_cls = METHODS.get(name)
    teachers = [build_model(TEACHER, INFO.num_classes, INPUT_SHAPE)] if method_cls.traits.needs_teacher else []
    student = build_model(STUDENTS.get(name, STUDENT), INFO.num_classes, INPUT_SHAPE)
    method = method_cls(student, teachers, method_cls.config_class(), INFO)
    method.train()
    return method


@pytest.mark.parametrize("name", METHODS.names())
def test_one_step_trains_the_student_and_not_the_teacher(name):
    method = fresh_method(name)
    teacher_before = [p.detach().clone() for t in method.teachers for p in t.parameters()]
    student_before = [p.detach().clone() for p in method.student.parameters()]
    # every network the method deploys (mutual learning: each peer) is optimised like the student
    deployed = {name: list(module.parameters()) for name, module in method.deployables().items()}
    deployed_before = {name: [p.detach().clone() for p in params] for name, params in deployed.items()}
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.1)
    batch = method.augment_batch(make_batch(), torch.Generator().manual_seed(1))
    output = method.training_step(batch)
    assert output.logits.shape == (8, INFO.num_classes)
    assert output.losses and all(v.dim() == 0 and torch.isfinite(v) for v in output.losses.values())
    output.loss.backward()
    assert all(p.grad is None for t in method.teachers for p in t.parameters()), "teacher received gradients"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.student.parameters()), (
        "student got no gradient"
    )
    for name, params in deployed.items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), f"{name} got no gradient"
    optimizer.step()
    assert all(torch.equal(a, p) for a, p in zip(teacher_before, (p for t in method.teachers for p in t.parameters())))
    assert any(not torch.equal(a, p) for a, p in zip(student_before, method.student.parameters()))
    for name, params in deployed.items():
        assert any(not torch.equal(a, p) for a, p in zip(deployed_before[name], params)), f"{name} did not change"
    for teacher in method.teachers:
        assert not teacher.training, "teachers must stay in eval mode"


@pytest.fixture
def two_threads():
    """Two torch threads for the test, whatever this test process has (pytest-xdist's workers get one each): the
    layouts' kernels split their sums by thread, so the rounding that CMI's 20 generator steps amplify differs with
    the thread count (up to 6/255 apart with one thread), and the bounds below are those of two threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("two_threads")
@pytest.mark.parametrize("name", METHODS.names())
def test_a_channels_last_step_gives_the_contiguous_step_losses(name):
    """``train.channels_last`` changes the memory layout of models and batches, never a result: every method's batch
    augmentation and step run on it, and give the contiguous layout's views, losses and student gradients. To
    float rounding, not bitwise (kernels sum in another order): the step is compared on the same augmented pixels,
    since CMI's synthesis optimises its generator for 20 steps and quantises to 1/255, where rounding differences
    move pixels by a level or two; PKT's similarity normalisation amplifies rounding on the near-zero embeddings of
    these random models (up to 4e-3 relative). A misplaced axis would give O(1) differences."""
    results, views = [], []
    for channels_last in (False, True):
        method = fresh_method(name)
        batch = make_batch()
        if channels_last:
            method = method.to(memory_format=torch.channels_last)
            batch = batch.to(torch.device("cpu"), channels_last=True)
        views.append(method.augment_batch(batch, torch.Generator().manual_seed(1)))
        output = method.training_step(views[0].to(torch.device("cpu"), channels_last=channels_last))
        output.loss.backward()
        results.append((output.losses, [p.grad for p in method.student.parameters()]))
    assert (views[1].inputs - views[0].inputs).abs().max() <= 4 / 255
    (losses, grads), (losses_last, grads_last) = results
    assert losses.keys() == losses_last.keys()
    for key in losses:
        torch.testing.assert_close(losses_last[key], losses[key], rtol=1e-2, atol=1e-5)
    for grad, grad_last in zip(grads, grads_last):
        assert (grad is None) == (grad_last is None)
        if grad is not None:
            torch.testing.assert_close(grad_last, grad, rtol=1e-2, atol=1e-4)
