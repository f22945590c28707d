"""CIFAR-10 and CIFAR-100 from the official python-pickle batches.

Files: ``cifar-10-batches-py/data_batch_1..5``, ``test_batch``, ``batches.meta`` and
``cifar-100-python/train``, ``test``, ``meta`` (the archives at https://www.cs.toronto.edu/~kriz/cifar.html,
which is also the layout torchvision's ``CIFAR10`` / ``CIFAR100`` download to). They are Python 2
pickles, read with a restricted unpickler (``encoding="bytes"``) that resolves only the globals a numpy
array needs and refuses any other, since a plain ``pickle.load`` of a crafted file runs code; they are
held in memory as uint8 (N, 3, 32, 32). Looked for in ``data.root`` (the batch folder itself or its
parent, i.e. a torchvision root), then ``~/.cache/kdistill``; with ``data.download: true`` torchvision
downloads them there.

Splits: 50,000 train / 10,000 test. Neither has an official validation split, so
:func:`kdistill.data.build_data` carves 5,000 (10%) from train by default; the CRD / RepDistiller /
SimKD benchmark recipe trains on all 50,000 and reports test accuracy: use ``--set data.val_size=0``
for that. Normalisation: each dataset's per-channel training-set mean/std. The ``cifar`` augment
preset is the benchmark recipe (random crop 32, padding 4, horizontal flip).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
from torch import Tensor

from kdistill.config import DataConfig
from kdistill.contracts import DatasetNotFoundError
from kdistill.data.imagefolder import default_roots, download_root, not_found
from kdistill.data.registry import DatasetSplits, register_dataset
from kdistill.data.transforms import tensor_splits


class CifarSpec(TypedDict):
    """Where one CIFAR dataset's files are and what they hold."""

    folder: str  # the batch folder, as in the archive
    train: list[str]  # batch files
    test: list[str]
    meta: tuple[str, str]  # (file, key of the class names)
    label_key: str
    num_classes: int
    mean: tuple[float, float, float]  # per channel, of the training set
    std: tuple[float, float, float]
    archive: str
    torchvision: str  # the torchvision.datasets class that downloads it


CIFAR: dict[str, CifarSpec] = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": ("batches.meta", "label_names"),
        "label_key": "labels",
        "num_classes": 10,
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2470, 0.2435, 0.2616),
        "archive": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "torchvision": "CIFAR10",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": ("meta", "fine_label_names"),
        "label_key": "fine_labels",
        "num_classes": 100,
        "mean": (0.5071, 0.4867, 0.4408),  # as in RepDistiller / CRD
        "std": (0.2675, 0.2565, 0.2761),
        "archive": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "torchvision": "CIFAR100",
    },
}


class BatchFileError(DatasetNotFoundError):
    """A CIFAR batch file is unreadable or names a global that genuine batches never hold (refused: it could run code).

    A :class:`DatasetNotFoundError`, so the CLI reports it as it reports missing files: get genuine files."""


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for bytes, limited to latin1."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode(.., {encoding!r}): only latin1 text is allowed")
    return text.encode("latin1")


_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy's array-unpickling helper, whatever module holds it
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy 1 spelling: the official archives
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy 2 spelling: batches re-saved since
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,  # bytes in protocol-2 pickles written by Python 3
}


class _BatchUnpickler(pickle.Unpickler):
    """Resolves only :data:`ALLOWED_GLOBALS`: the batches hold dicts, lists, strings and numpy arrays."""

    def __init__(self, handle: Any, path: Path) -> None:
        super().__init__(handle, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[(module, name)]
        raise BatchFileError(
            f"{self.path}: refused to load the global {module}.{name}: CIFAR python batches hold only dicts, lists, "
            f"strings and numpy arrays, so this file is not a genuine batch and unpickling it could run code. "
            f"Delete it and download the archive again (https://www.cs.toronto.edu/~kriz/cifar.html)."
        )


def _unpickle(path: Path) -> dict[str, Any]:
    with open(path, "rb") as handle:
        try:
            entry = _BatchUnpickler(handle, path).load()
        except BatchFileError:
            raise
        except Exception as error:  # noqa: BLE001 - a corrupt or crafted pickle raises many kinds
            raise BatchFileError(
                f"{path} could not be read ({type(error).__name__}: {error}); it is corrupt or not a CIFAR batch. "
                f"Delete it and download the archive again (https://www.cs.toronto.edu/~kriz/cifar.html)."
            ) from None
    if not isinstance(entry, dict):
        raise TypeError(f"{path}: expected a dict of batch entries, found {type(entry).__name__}; is it a CIFAR batch?")
    return {(key.decode() if isinstance(key, bytes) else key): value for key, value in entry.items()}


def _read_batches(directory: Path, names: list[str], label_key: str) -> tuple[Tensor, Tensor]:
    images, labels = [], []
    for name in names:
        entry = _unpickle(directory / name)
        data = np.asarray(entry["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{directory / name}: expected data of shape (N, 3072), found {data.shape}")
        images.append(data.reshape(-1, 3, 32, 32))  # rows are R plane, G plane, B plane, each row-major
        labels.append(np.asarray(entry[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _find(config: DataConfig, spec: CifarSpec) -> Path:
    folder = spec["folder"]
    required = spec["train"] + spec["test"]
    candidates = default_roots(config, folder)  # data.root itself, data.root/<folder>, ~/.cache/kdistill/<folder>
    for candidate in candidates:
        if all((candidate / name).is_file() for name in required):
            return candidate
    if config.download:
        import torchvision.datasets

        root = download_root(config)
        getattr(torchvision.datasets, spec["torchvision"])(str(root), train=True, download=True)
        return root / folder
    raise not_found(
        spec["torchvision"].replace("CIFAR", "CIFAR-"),
        candidates,
        [f"{folder}/{name}" for name in required],
        [
            (
                f"--set data.download=true   (torchvision.datasets.{spec['torchvision']} downloads {spec['archive']} "
                f"to data.root or ~/.cache/kdistill)"
            ),
            f"download and untar {spec['archive']}, then --set data.root=DIR   (DIR/{folder}/...)",
        ],
    )


def _class_names(directory: Path, spec: CifarSpec) -> list[str] | None:
    name, key = spec["meta"]
    if not (directory / name).is_file():
        return None
    names = _unpickle(directory / name).get(key)
    if names is None or len(names) != spec["num_classes"]:
        return None
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _cifar(config: DataConfig, name: str) -> DatasetSplits:
    spec = CIFAR[name]
    directory = _find(config, spec)
    train = _read_batches(directory, spec["train"], spec["label_key"])
    test = _read_batches(directory, spec["test"], spec["label_key"])
    return tensor_splits(
        config,
        train,
        test,
        num_classes=spec["num_classes"],
        mean=spec["mean"],
        std=spec["std"],
        class_names=_class_names(directory, spec),
        default_val_size=max(1, len(train[1]) // 10),
    )


@register_dataset(
    "cifar10",
    description="CIFAR-10: 50,000 train / 10,000 test 32x32 colour images, 10 classes (10% of train carved for val)",
    how_to_get="--set data.download=true (torchvision CIFAR10), or untar cifar-10-python.tar.gz under data.root",
)
def cifar10(config: DataConfig) -> DatasetSplits:
    return _cifar(config, "cifar10")


@register_dataset(
    "cifar100",
    description="CIFAR-100: 50,000 train / 10,000 test 32x32 colour images, 100 classes (10% of train carved for val)",
    how_to_get="--set data.download=true (torchvision CIFAR100), or untar cifar-100-python.tar.gz under data.root",
)
def cifar100(config: DataConfig) -> DatasetSplits:
    return _cifar(config, "cifar100")
