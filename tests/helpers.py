"""Helpers shared by the tests (imported as ``from helpers import ...``; pytest puts tests/ on the path)."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from kdistill.config import Config, ModelConfig, load_config
from kdistill.contracts import Batch, DataInfo
from kdistill.data.cifar import CIFAR
from kdistill.methods import METHODS
from kdistill.methods.base import Method
from kdistill.models import build_model

ROW, COL = 2, 5  # the bright pixel of the orientation marker: row 2, column 5 (not symmetric under transpose)


def marker(height: int = 28, width: int = 28) -> np.ndarray:
    """A dark image with one bright pixel at (ROW, COL): shows whether a reader transposes or flips."""
    image = np.zeros((height, width), dtype=np.uint8)
    image[ROW, COL] = 255
    return image


# Tiny conv models on random 1x16x16 images, 5 classes: method tests on fixed inputs (test_simkd, test_aekd).
TINY_CLASSES = 5
TINY_INPUT_SHAPE = (1, 16, 16)
TINY_TEACHER = ModelConfig(
    name="cnn", kwargs={"channels": [16, 32], "padding": 1, "batch_norm": True, "head": "avg"}
)  # stages 16x8x8, 32x4x4
TINY_STUDENT = ModelConfig(
    name="cnn", kwargs={"channels": [8, 12], "padding": 1, "batch_norm": True, "head": "avg"}
)  # stages 8x8x8, 12x4x4


def build_tiny_method(
    name: str,
    student: ModelConfig = TINY_STUDENT,
    teachers: Sequence[ModelConfig] = (TINY_TEACHER,),
    seed: int = 0,
    **overrides,
) -> Method:
    """The registered method ``name`` on freshly initialised (seeded) tiny models, its config ``overrides`` applied."""
    torch.manual_seed(seed)
    info = DataInfo(num_classes=TINY_CLASSES, input_shape=TINY_INPUT_SHAPE, num_train=32)
    method_cls = METHODS.get(name)
    teacher_models = [build_model(teacher, TINY_CLASSES, TINY_INPUT_SHAPE) for teacher in teachers]
    student_model = build_model(student, TINY_CLASSES, TINY_INPUT_SHAPE)
    return method_cls(student_model, teacher_models, method_cls.config_class(**overrides), info)


def tiny_batch(size: int = 8, seed: int = 0) -> Batch:
    """``size`` seeded random images of :data:`TINY_INPUT_SHAPE` with random labels."""
    generator = torch.Generator().manual_seed(seed)
    return Batch(
        inputs=torch.randn(size, *TINY_INPUT_SHAPE, generator=generator),
        targets=torch.randint(0, TINY_CLASSES, (size,), generator=generator),
        indices=torch.arange(size),
    )


def digits_overrides(tmp_path, name: str, *overrides: str) -> list[str]:
    """The ``--set`` values of a fast real-data run: digits (8x8), SGD, cosine schedule, no progress bars."""
    return [
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


def digits_config(tmp_path, name: str, *overrides: str) -> Config:
    """The config of :func:`digits_overrides`."""
    return load_config(overrides=digits_overrides(tmp_path, name, *overrides))


def write_cifar(root: Path, name: str, train_per_batch: int, test_count: int) -> dict:
    """Python-pickle batches as in cifar-10-python.tar.gz / cifar-100-python.tar.gz (bytes keys)."""
    spec = CIFAR[name]
    folder = root / spec["folder"]
    folder.mkdir(parents=True)
    label_key = spec["label_key"].encode()
    rng = np.random.default_rng(0)
    written = {}

    def batch(count: int, first_label: int) -> dict:
        data = np.zeros((count, 3, 32, 32), dtype=np.uint8)
        data[0, 0] = marker(32, 32)  # red channel: one bright pixel at (ROW, COL)
        data[0, 2] = 77  # blue channel: constant
        data[1:] = rng.integers(0, 256, size=(count - 1, 3, 32, 32), dtype=np.uint8)
        labels = [(first_label + i) % spec["num_classes"] for i in range(count)]
        return {b"data": data.reshape(count, -1), label_key: labels, b"batch_label": b"batch"}

    for index, file in enumerate(spec["train"]):
        entry = batch(train_per_batch, first_label=3 * index)
        written[file] = entry
        (folder / file).write_bytes(pickle.dumps(entry, protocol=2))
    entry = batch(test_count, first_label=7)
    written["test"] = entry
    (folder / spec["test"][0]).write_bytes(pickle.dumps(entry, protocol=2))
    meta_name, meta_key = spec["meta"]
    names = [f"class_{i}".encode() for i in range(spec["num_classes"])]
    (folder / meta_name).write_bytes(pickle.dumps({meta_key.encode(): names}, protocol=2))
    return written
