"""CIFAR python batches are read with a restricted unpickler: genuine files load as before, crafted ones run nothing.

The official archives are Python 2 pickles (protocol 2): byte strings are ``SHORT_BINSTRING``/``BINSTRING`` and
numpy arrays name ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and ``numpy.dtype``. Files re-saved by
Python 3 at protocol 2 (as tests/test_datasets.py writes them) spell bytes ``_codecs.encode(text, "latin1")`` and,
under numpy 2, name ``numpy._core.multiarray._reconstruct``. Both layouts must load identically.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from kdistill.config import DataConfig
from kdistill.contracts import DatasetNotFoundError
from kdistill.data import build_data
from kdistill.data.cifar import CIFAR


class Python2Pickler(pickle._Pickler):  # the pure-Python pickler: its per-type dispatch can be changed
    """Writes ``bytes`` and ``str`` as Python 2 byte strings, as cPickle did for the official CIFAR files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_string(self, text: bytes | str) -> None:
        raw = text.encode("latin1") if isinstance(text, str) else text
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(text)

    dispatch[bytes] = save_python2_string
    dispatch[str] = save_python2_string


def python2_pickle(entry: dict) -> bytes:
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(entry)
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")  # numpy 1's module


def python3_pickle(entry: dict) -> bytes:
    return pickle.dumps(entry, protocol=2)


def write_cifar10(root: Path, dumps) -> dict[str, dict]:
    """cifar-10-batches-py with 2 images per train batch and 3 test images; returns what each file holds."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for index, name in enumerate(CIFAR["cifar10"]["train"] + CIFAR["cifar10"]["test"]):
        count = 3 if name == "test_batch" else 2
        entry = {
            b"batch_label": f"training batch {index + 1} of 5".encode(),
            b"labels": [(3 * index + i) % 10 for i in range(count)],
            b"data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8),
            b"filenames": [f"image_{index}_{i}.png".encode() for i in range(count)],
        }
        written[name] = entry
        (folder / name).write_bytes(dumps(entry))
    meta = {b"num_cases_per_batch": 10000, b"label_names": [f"class_{i}".encode() for i in range(10)], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(dumps(meta))
    return written


def build(name: str, root: Path):
    return build_data(DataConfig(name=name, root=str(root), val_size=0), seed=0)


def uint8_images(dataset, mean: tuple, std: tuple) -> np.ndarray:
    """The dataset's normalised images mapped back to the uint8 values of the file, flattened as in the batch."""
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])  # (N, 3, 32, 32)
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return torch.round((images * std + mean) * 255).to(torch.uint8).reshape(len(dataset), -1).numpy()


NUMPY_MULTIARRAY = np.empty(0).__reduce__()[0].__module__  # numpy._core.multiarray in numpy 2
GLOBALS = {  # the globals each layout names
    "official-python2": [b"cnumpy.core.multiarray\n_reconstruct\n", b"cnumpy\nndarray\n", b"cnumpy\ndtype\n"],
    "python3-protocol2": [f"c{NUMPY_MULTIARRAY}\n_reconstruct\n".encode(), b"c_codecs\nencode\n"],
}


@pytest.mark.parametrize("layout, dumps", [("official-python2", python2_pickle), ("python3-protocol2", python3_pickle)])
def test_genuine_cifar_batches_load_identically(tmp_path, layout, dumps):
    written = write_cifar10(tmp_path, dumps)
    first_batch = (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    assert all(name in first_batch for name in GLOBALS[layout])
    assert (b"_codecs" in first_batch) == (layout == "python3-protocol2")
    data = build("cifar10", tmp_path)
    spec = CIFAR["cifar10"]
    train = [written[name] for name in spec["train"]]
    assert np.array_equal(
        uint8_images(data.train, spec["mean"], spec["std"]), np.concatenate([e[b"data"] for e in train])
    )
    assert [data.train[i][1] for i in range(10)] == [label for e in train for label in e[b"labels"]]
    test = written["test_batch"]
    assert np.array_equal(uint8_images(data.test, spec["mean"], spec["std"]), test[b"data"])
    assert [data.test[i][1] for i in range(3)] == test[b"labels"]
    assert data.class_names == [f"class_{i}" for i in range(10)]


class CallsFunction:
    """What a crafted batch file holds: unpickling it calls ``function(*arguments)``."""

    def __init__(self, function, arguments: tuple) -> None:
        self.function, self.arguments = function, arguments

    def __reduce__(self):
        return (self.function, self.arguments)


def write_crafted_cifar100(root: Path, payload: object) -> Path:
    """A cifar-100-python folder whose ``train`` file also holds ``payload``; ``test`` and ``meta`` are genuine."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    data = np.zeros((2, 3072), dtype=np.uint8)
    genuine = {b"data": data, b"fine_labels": [0, 1], b"coarse_labels": [0, 0], b"batch_label": b"testing"}
    (folder / "train").write_bytes(pickle.dumps({**genuine, b"payload": payload}, protocol=2))
    (folder / "test").write_bytes(pickle.dumps(genuine, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"x"] * 100}, protocol=2))
    return folder / "train"


def test_crafted_cifar_batch_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "code-ran"
    crafted = write_crafted_cifar100(tmp_path / "data", CallsFunction(os.system, (f"touch {marker}",)))
    with pytest.raises(DatasetNotFoundError) as refused:
        build("cifar100", tmp_path / "data")
    message = str(refused.value)
    assert f"{os.system.__module__}.system" in message and str(crafted) in message and "not a genuine" in message
    assert not marker.exists()
    with open(crafted, "rb") as handle:  # the file is a live exploit: a plain pickle.load runs the command
        pickle.load(handle, encoding="bytes")
    assert marker.exists()


def test_codecs_global_is_limited_to_latin1(tmp_path):
    """``_codecs.encode`` is allowed for Python 3 byte strings only; another codec is refused."""
    crafted = write_crafted_cifar100(tmp_path, CallsFunction(codecs.encode, ("text", "rot13")))
    with pytest.raises(DatasetNotFoundError, match=r"rot13.*only latin1"):
        build("cifar100", tmp_path)
    assert pickle.loads(crafted.read_bytes(), encoding="bytes")[b"payload"] == "grkg"  # plain pickle would call it
