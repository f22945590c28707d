"""EMNIST (Cohen et al. 2017): the official MATLAB files (seed 002) or the IDX files torchvision uses.

One dataset name per split: ``emnist_letters``, ``emnist_balanced``, ``emnist_byclass``,
``emnist_bymerge``, ``emnist_digits``, ``emnist_mnist`` (:data:`EMNIST_SPLITS` has their class counts
and sizes). Two on-disk formats, tried in this order:

1. ``emnist-<split>.mat`` from the official ``matlab.zip`` (seed 002 reads ``data/matlab/emnist-letters.mat``):
   a struct ``dataset`` with fields ``train`` and ``test`` (structs with ``images``, N x 784 uint8, and
   ``labels``, N x 1) and ``mapping`` (label -> ASCII codes). Read with :func:`scipy.io.loadmat`.
   Looked for in ``data.root`` (or ``data.root`` naming the file), ``data.root/matlab``,
   ``data.root/EMNIST[/matlab]``, ``./data/matlab`` (seed 002's path) and ``~/.cache/kdistill/EMNIST/matlab``.
2. ``emnist-<split>-{train,test}-{images-idx3,labels-idx1}-ubyte[.gz]`` from the official ``gzip.zip``,
   as torchvision's ``EMNIST`` leaves them in ``<root>/EMNIST/raw/`` (and ``raw/gzip/``). Looked for in
   ``data.root``, ``data.root/gzip``, ``data.root/EMNIST/raw[/gzip]`` and ``~/.cache/kdistill/EMNIST/raw``;
   ``data.download: true`` lets torchvision download them there.

Orientation: both releases store each 28x28 image transposed relative to MNIST (the MATLAB rows are
column-major, the IDX images were written from them), so a row reshaped C-order to 28x28 shows the
character mirrored and rotated (pytorch/vision#8783, tensorflow/datasets#812; the usual loaders use
``reshape(..., order="F")``). Both readers transpose, so images arrive upright, as in MNIST.

Labels: ``letters`` stores 1..26 (0 is an unused "N/A" class in torchvision); they are shifted to
0..25. The other splits are already 0-based. No split has an official validation set; 10% of train
is carved by :func:`kdistill.data.build_data`. Normalisation: mean 0.1722, std 0.3309 (the letters
training set; close for the other splits).
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import torch

from kdistill.config import DataConfig
from kdistill.data.imagefolder import CACHE_DIR, download_root, not_found
from kdistill.data.mnist_like import read_idx
from kdistill.data.registry import DatasetSplits, register_dataset
from kdistill.data.transforms import tensor_splits

_DIGITS = list(string.digits)
_UPPER = list(string.ascii_uppercase)
_MERGED_LOWER = list("abdefghnqrt")  # the lower-case letters bymerge / balanced keep separate

# split -> (classes, train size, test size, label offset, class names)
EMNIST_SPLITS: dict[str, dict] = {
    "letters": {
        "classes": 26,
        "train": 124_800,
        "test": 20_800,
        "offset": 1,
        "names": [u + "/" + u.lower() for u in _UPPER],
    },
    "balanced": {
        "classes": 47,
        "train": 112_800,
        "test": 18_800,
        "offset": 0,
        "names": _DIGITS + _UPPER + _MERGED_LOWER,
    },
    "byclass": {
        "classes": 62,
        "train": 697_932,
        "test": 116_323,
        "offset": 0,
        "names": _DIGITS + _UPPER + list(string.ascii_lowercase),
    },
    "bymerge": {
        "classes": 47,
        "train": 697_932,
        "test": 116_323,
        "offset": 0,
        "names": _DIGITS + _UPPER + _MERGED_LOWER,
    },
    "digits": {"classes": 10, "train": 240_000, "test": 40_000, "offset": 0, "names": _DIGITS},
    "mnist": {"classes": 10, "train": 60_000, "test": 10_000, "offset": 0, "names": _DIGITS},
}
EMNIST_MEAN, EMNIST_STD = (0.1722,), (0.3309,)
MATLAB_URL = "https://biometrics.nist.gov/cs_links/EMNIST/matlab.zip"
GZIP_URL = "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip"
EMNIST_PAGE = "https://www.nist.gov/itl/products-and-services/emnist-dataset"


def upright(images: np.ndarray) -> np.ndarray:
    """(N, 784) or (N, 28, 28) EMNIST rows as stored -> (N, 28, 28) upright (transpose each image)."""
    return np.ascontiguousarray(np.asarray(images, dtype=np.uint8).reshape(-1, 28, 28).transpose(0, 2, 1))


def _mat_candidates(config: DataConfig, split: str) -> list[Path]:
    name = f"emnist-{split}.mat"
    places: list[Path] = []
    if config.root:
        root = Path(config.root).expanduser()
        if root.suffix == ".mat":
            places.append(root)
        places += [root / name, root / "matlab" / name, root / "EMNIST" / name, root / "EMNIST" / "matlab" / name]
    places += [Path("data") / "matlab" / name, CACHE_DIR / "EMNIST" / "matlab" / name]
    return list(dict.fromkeys(places))


def _idx_dirs(config: DataConfig) -> list[Path]:
    places: list[Path] = []
    if config.root:
        root = Path(config.root).expanduser()
        places += [root, root / "gzip", root / "EMNIST" / "raw", root / "EMNIST" / "raw" / "gzip"]
    places += [CACHE_DIR / "EMNIST" / "raw", CACHE_DIR / "EMNIST" / "raw" / "gzip"]
    return list(dict.fromkeys(places))


def _idx_stems(split: str) -> dict[str, str]:
    return {
        f"{part}_{kind}": f"emnist-{split}-{part}-{kind}-{'idx3' if kind == 'images' else 'idx1'}-ubyte"
        for part in ("train", "test")
        for kind in ("images", "labels")
    }


def _idx_files(directory: Path, split: str) -> dict[str, Path] | None:
    found = {}
    for key, stem in _idx_stems(split).items():
        for name in (stem, stem + ".gz"):
            if (directory / name).is_file():
                found[key] = directory / name
                break
        else:
            return None
    return found


def _field(struct, name: str):
    """A field of a loadmat struct (loaded as a (1, 1) record array)."""
    return struct[name][0, 0]


def read_emnist_mat(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(train images (N, 28, 28) upright, train labels (N,), test images, test labels, mapping or None)."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
    except NotImplementedError as error:  # MATLAB v7.3 (HDF5): not the official release's format
        raise ValueError(f"{path}: {error}; re-save it as a MATLAB v5 file (save -v7)") from None
    if "dataset" not in mat:
        raise ValueError(f"{path}: no 'dataset' struct (keys: {', '.join(k for k in mat if not k.startswith('__'))})")
    dataset = mat["dataset"]
    out = []
    for part in ("train", "test"):
        struct = _field(dataset, part)
        out += [upright(_field(struct, "images")), np.asarray(_field(struct, "labels")).reshape(-1).astype(np.int64)]
    mapping = _field(dataset, "mapping") if "mapping" in (dataset.dtype.names or ()) else None
    return out[0], out[1], out[2], out[3], mapping


def _names_from_mapping(mapping: np.ndarray | None, split: str) -> list[str]:
    """Class names from the .mat ``mapping`` (rows: label, ASCII code[, ASCII code]), else the built-in table."""
    spec = EMNIST_SPLITS[split]
    if mapping is None:
        return list(spec["names"])
    rows = np.asarray(mapping).reshape(-1, np.asarray(mapping).shape[-1]).astype(int)
    names = ["/".join(chr(c) for c in row[1:]) for row in sorted(rows.tolist())]
    return names if len(names) == spec["classes"] else list(spec["names"])


def _load(config: DataConfig, split: str):
    for path in _mat_candidates(config, split):
        if path.is_file():
            train_x, train_y, test_x, test_y, mapping = read_emnist_mat(path)
            return train_x, train_y, test_x, test_y, _names_from_mapping(mapping, split)
    directories = _idx_dirs(config)
    files = next((f for f in (_idx_files(d, split) for d in directories) if f is not None), None)
    if files is None and config.download:
        from torchvision.datasets import EMNIST

        root = download_root(config)
        EMNIST(str(root), split=split, train=True, download=True)
        files = _idx_files(root / "EMNIST" / "raw", split)
    if files is None:
        stems = _idx_stems(split)
        raise not_found(
            f"EMNIST {split}",
            [*_mat_candidates(config, split), *directories],
            [f"emnist-{split}.mat", "or " + ", ".join(s + "[.gz]" for s in stems.values())],
            [
                f"download {MATLAB_URL} (see {EMNIST_PAGE}), unzip, then --set data.root=DIR   "
                f"(DIR/matlab/emnist-{split}.mat, as seed 002 uses)",
                f"--set data.download=true   (torchvision.datasets.EMNIST(split='{split}') downloads {GZIP_URL} "
                "to data.root or ~/.cache/kdistill: EMNIST/raw/)",
                f"download {GZIP_URL}, unzip, then --set data.root=DIR/gzip",
            ],
        )
    arrays = {key: read_idx(path) for key, path in files.items()}
    return (
        upright(arrays["train_images"]),
        arrays["train_labels"].astype(np.int64),
        upright(arrays["test_images"]),
        arrays["test_labels"].astype(np.int64),
        list(EMNIST_SPLITS[split]["names"]),
    )


def emnist(config: DataConfig, split: str) -> DatasetSplits:
    spec = EMNIST_SPLITS[split]
    train_x, train_y, test_x, test_y, names = _load(config, split)
    train_y, test_y = train_y - spec["offset"], test_y - spec["offset"]
    for part, labels in (("train", train_y), ("test", test_y)):
        if labels.size and (labels.min() < 0 or labels.max() >= spec["classes"]):
            raise ValueError(
                f"EMNIST {split} {part} labels span {labels.min() + spec['offset']}..{labels.max() + spec['offset']}; "
                f"expected {spec['offset']}..{spec['classes'] - 1 + spec['offset']}"
            )
    return tensor_splits(
        config,
        train=(torch.from_numpy(train_x).unsqueeze(1), torch.from_numpy(train_y)),
        test=(torch.from_numpy(test_x).unsqueeze(1), torch.from_numpy(test_y)),
        num_classes=spec["classes"],
        mean=EMNIST_MEAN,
        std=EMNIST_STD,
        class_names=names,
        default_val_size=max(1, len(train_y) // 10),
    )


def _register(split: str) -> None:
    spec = EMNIST_SPLITS[split]

    @register_dataset(
        f"emnist_{split}",
        description=f"EMNIST {split}: {spec['train']:,} train / {spec['test']:,} test 28x28 grey images, "
        f"{spec['classes']} classes (10% of train carved for val)",
        how_to_get=f"emnist-{split}.mat from {MATLAB_URL} under data.root, "
        "or --set data.download=true (torchvision EMNIST)",
    )
    def builder(config: DataConfig) -> DatasetSplits:
        return emnist(config, split)

    builder.__name__ = f"emnist_{split}"


for _split in EMNIST_SPLITS:
    _register(_split)
