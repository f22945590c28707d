"""Fashion-MNIST (IDX files) and scikit-learn's bundled digits: the real data usable offline.

Fashion-MNIST is read from, in order: ``data.root`` (the four ``.gz`` IDX files directly, or a
torchvision root with ``FashionMNIST/raw/``), Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``), and ``~/.cache/kdistill/FashionMNIST/raw``; with
``data.download: true`` torchvision downloads it.
"""

from __future__ import annotations

import functools
import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from numpy.typing import DTypeLike

from kdistill.config import DataConfig
from kdistill.contracts import DatasetNotFoundError
from kdistill.data.registry import DatasetSplits, register_dataset
from kdistill.data.transforms import tensor_splits

FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path("~/.cache/kdistill").expanduser()


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic 0x0000 <dtype> <ndim>, big-endian dims, data. Read-only: the
    array is decoded once per process while the file stays the same (size and modification time), so the runs of
    a demo, trials or a sweep in one process do not each decompress the same data set again."""
    path = Path(path).resolve()
    status = path.stat()
    return _decoded_idx(path, status.st_size, status.st_mtime_ns)


@functools.lru_cache(maxsize=4)  # a data set's four files
def _decoded_idx(path: Path, size: int, mtime_ns: int) -> np.ndarray:
    """:func:`read_idx` of one version of a file (``size`` and ``mtime_ns`` are part of the cache key)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dtype_code, ndim = data[2], data[3]
    dtypes: dict[int, DTypeLike] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if dtype_code not in dtypes:
        raise ValueError(f"{path}: unknown IDX data type 0x{dtype_code:02x}")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=dtypes[dtype_code], offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(
            f"{path}: expected {int(np.prod(shape))} values for shape {shape}, found {array.size} (truncated?)"
        )
    return array.reshape(shape)


def _idx_file(directory: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (directory / name).exists():
            return directory / name
    raise FileNotFoundError(directory / stem)


def _fashion_dir(config: DataConfig) -> Path:
    candidates: list[Path | None] = []
    if config.root:
        root = Path(config.root).expanduser()
        candidates += [root, root / "FashionMNIST" / "raw"]
    candidates += [DEBIAN_FASHION_DIR, CACHE_DIR / "FashionMNIST" / "raw"]
    for candidate in candidates:
        if candidate is None:
            continue
        try:
            for stem in FASHION_FILES.values():
                _idx_file(candidate, stem)
            return candidate
        except FileNotFoundError:
            continue
    if config.download:
        from torchvision.datasets import FashionMNIST

        root = Path(config.root).expanduser() if config.root else CACHE_DIR
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
        return root / "FashionMNIST" / "raw"
    looked = ", ".join(str(c) for c in candidates if c is not None)
    raise DatasetNotFoundError(
        "Fashion-MNIST not found (looked in " + looked + "). Get it with one of:\n"
        "  sudo apt-get install dataset-fashion-mnist   (Debian/Ubuntu: files in /usr/share/datasets/fashion-mnist)\n"
        "  --set data.download=true                     (torchvision downloads it to ~/.cache/kdistill)\n"
        "  --set data.root=DIR                          (a folder with the four *-ubyte.gz files)"
    )


@register_dataset(
    "fashion_mnist",
    description="Fashion-MNIST: 60,000 train / 10,000 test 28x28 grey images, 10 classes",
    how_to_get="apt-get install dataset-fashion-mnist, or data.download=true",
)
def fashion_mnist(config: DataConfig) -> DatasetSplits:
    directory = _fashion_dir(config)
    arrays = {key: read_idx(_idx_file(directory, stem)) for key, stem in FASHION_FILES.items()}
    mean, std = (0.2860,), (0.3530,)
    return tensor_splits(
        config,
        train=(
            torch.from_numpy(arrays["train_images"].copy()).unsqueeze(1),  # (N, 1, 28, 28)
            torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        ),
        test=(
            torch.from_numpy(arrays["test_images"].copy()).unsqueeze(1),
            torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        ),
        num_classes=len(FASHION_CLASSES),
        mean=mean,
        std=std,
        class_names=FASHION_CLASSES,
        default_val_size=5000,
    )


@register_dataset(
    "digits",
    description="scikit-learn digits: 1,797 8x8 grey images, 10 classes (fixed 80/20 train/test split)",
    how_to_get="bundled with scikit-learn (pip install scikit-learn)",
)
def digits(config: DataConfig) -> DatasetSplits:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetNotFoundError("the digits dataset ships with scikit-learn: pip install scikit-learn") from None
    bunch = load_digits()
    images = torch.from_numpy((bunch.images * 16).clip(0, 255).astype(np.uint8)).unsqueeze(1)  # (1797, 1, 8, 8)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    test_count = len(labels) // 5
    test_idx, train_idx = order[:test_count].sort().values, order[test_count:].sort().values
    return tensor_splits(
        config,
        train=(images[train_idx], labels[train_idx]),
        test=(images[test_idx], labels[test_idx]),
        num_classes=10,
        mean=(0.3059,),
        std=(0.3753,),
        class_names=[str(i) for i in range(10)],
        default_val_size=180,
    )
