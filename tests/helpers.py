"""Helpers shared by the tests (imported as ``from helpers import ...``; pytest puts tests/ on the path)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from kdistill.config import Config, load_config
from kdistill.data.cifar import CIFAR

ROW, COL = 2, 5  # the bright pixel of the orientation marker: row 2, column 5 (not symmetric under transpose)


def marker(height: int = 28, width: int = 28) -> np.ndarray:
    """A dark image with one bright pixel at (ROW, COL): shows whether a reader transposes or flips."""
    image = np.zeros((height, width), dtype=np.uint8)
    image[ROW, COL] = 255
    return image


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
