"""Oxford Flowers102 (Nilsback & Zisserman 2008) from the official files.

Files (https://www.robots.ox.ac.uk/~vgg/data/flowers/102/): ``jpg/image_XXXXX.jpg`` (from
``102flowers.tgz``), ``imagelabels.mat`` (``labels``: 1 x 8189, classes 1..102, shifted to 0..101) and
``setid.mat`` (``trnid``, ``valid``, ``tstid``: 1-based image numbers). Looked for in ``data.root``,
``data.root/flowers-102`` (torchvision's layout) and ``~/.cache/kdistill/flowers-102``;
``data.download: true`` lets torchvision's ``Flowers102`` download them there.

Splits: the official ones, as seed 000 uses them (TFDS ``oxford_flowers102``): train 1,020 /
val 1,020 (the official validation split, in ``DatasetSplits.val``) / test 6,149.
Images are read lazily with PIL; ImageNet mean/std; ``data.image_size`` defaults to 224 (seed 000
trains at 128: ``--set data.image_size=128 --set data.augment=resize_crop``). See
:mod:`kdistill.data.imagefolder` for how each augment preset sees the variable-size images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdistill.config import DataConfig
from kdistill.data.imagefolder import file_splits, locate, not_found
from kdistill.data.registry import DatasetSplits, register_dataset

FLOWERS_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
REQUIRED = ["jpg/", "imagelabels.mat", "setid.mat"]


def _download(root: Path) -> None:
    from torchvision.datasets import Flowers102

    Flowers102(str(root), split="train", download=True)


def _find(config: DataConfig) -> Path:
    how = [
        "--set data.download=true   (torchvision.datasets.Flowers102 downloads 102flowers.tgz, imagelabels.mat and "
        "setid.mat to data.root/flowers-102 or ~/.cache/kdistill/flowers-102)",
        f"download 102flowers.tgz, imagelabels.mat and setid.mat from {FLOWERS_URL}, untar, then "
        "--set data.root=DIR   (DIR/jpg/image_00001.jpg, DIR/imagelabels.mat, DIR/setid.mat)",
    ]
    return locate(config, "Flowers102", "flowers-102", REQUIRED, how, _download)


def _class_names() -> list[str] | None:
    try:
        from torchvision.datasets import Flowers102

        names = list(getattr(Flowers102, "classes", []))
    except ImportError:
        return None
    return names if len(names) == 102 else None


@register_dataset(
    "flowers102",
    description="Oxford Flowers102: official 1,020 train / 1,020 val / 6,149 test images, 102 classes; 224 px default",
    how_to_get=f"--set data.download=true (torchvision Flowers102), or the files of {FLOWERS_URL} under data.root",
)
def flowers102(config: DataConfig) -> DatasetSplits:
    from scipy.io import loadmat

    root = _find(config)
    labels = np.asarray(loadmat(str(root / "imagelabels.mat"))["labels"]).reshape(-1).astype(np.int64) - 1
    setid = loadmat(str(root / "setid.mat"))

    def split(key: str):
        ids = np.asarray(setid[key]).reshape(-1).astype(np.int64)
        if ids.size and (ids.min() < 1 or ids.max() > labels.size):
            raise ValueError(f"{root / 'setid.mat'}: {key} holds image numbers outside 1..{labels.size}")
        paths = [root / "jpg" / f"image_{i:05d}.jpg" for i in ids]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            names = [p.name for p in missing[:3]] + (["..."] if len(missing) > 3 else [])
            raise not_found(
                f"Flowers102 images ({len(missing)} missing)",
                [root / "jpg"],
                names,
                [f"re-extract 102flowers.tgz from {FLOWERS_URL} into {root}"],
            )
        return paths, labels[ids - 1].tolist()

    return file_splits(
        config,
        train=split("trnid"),
        val=split("valid"),
        test=split("tstid"),
        num_classes=102,
        class_names=_class_names(),
    )
