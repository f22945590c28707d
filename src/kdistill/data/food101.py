"""Food-101 (Bossard et al. 2014) from the official archive.

Files (``food-101.tar.gz`` from https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/):
``food-101/images/<class>/<id>.jpg``, ``food-101/meta/train.json`` and ``test.json`` (``{class:
["class/id", ...]}``) and ``food-101/meta/classes.txt``. Looked for in ``data.root`` (the
``food-101`` folder itself or its parent, which is torchvision's layout) and
``~/.cache/kdistill/food-101``; ``data.download: true`` lets torchvision's ``Food101`` download
it there.

Classes are the sorted class names (the order of ``classes.txt`` and of torchvision). Splits: the
official 75,750 train / 25,250 test; no official validation split, so
:func:`kdistill.data.build_data` carves 10% of train (7,575). Images are read lazily with PIL (a few
are greyscale: converted to RGB); ImageNet mean/std; ``data.image_size`` defaults to 224.
"""

from __future__ import annotations

import json
from pathlib import Path

from kdistill.config import DataConfig
from kdistill.data.imagefolder import file_splits, locate, not_found
from kdistill.data.registry import DatasetSplits, register_dataset

FOOD_URL = "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/"
FOOD_ARCHIVE = "http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz"


def _download(root: Path) -> None:
    from torchvision.datasets import Food101

    Food101(str(root), split="train", download=True)


def _find(config: DataConfig) -> Path:
    how = [
        f"--set data.download=true   (torchvision.datasets.Food101 downloads {FOOD_ARCHIVE}, about 5 GB, "
        "to data.root/food-101 or ~/.cache/kdistill/food-101)",
        f"download food-101.tar.gz ({FOOD_URL}), untar it in DIR, then --set data.root=DIR   "
        "(DIR/food-101/images/, DIR/food-101/meta/)",
    ]
    return locate(config, "Food-101", "food-101", ["images/", "meta/train.json", "meta/test.json"], how, _download)


@register_dataset(
    "food101",
    description="Food-101: official 75,750 train / 25,250 test images, 101 classes (10% of train carved for val); "
    "224 px default",
    how_to_get=f"--set data.download=true (torchvision Food101), or untar {FOOD_ARCHIVE} under data.root",
)
def food101(config: DataConfig) -> DatasetSplits:
    root = _find(config)
    meta = {part: json.loads((root / "meta" / f"{part}.json").read_text()) for part in ("train", "test")}
    classes = sorted(meta["train"])
    classes_txt = root / "meta" / "classes.txt"
    if classes_txt.is_file():
        listed = [line.strip() for line in classes_txt.read_text().splitlines() if line.strip()]
        if sorted(listed) != classes:
            raise ValueError(f"{classes_txt} lists other classes than {root / 'meta' / 'train.json'}")
    class_to_idx = {name: i for i, name in enumerate(classes)}

    def split(part: str):
        unknown = sorted(set(meta[part]) - set(class_to_idx))
        if unknown:
            raise ValueError(f"{root / 'meta' / part}.json has classes not in train.json: {', '.join(unknown[:5])}")
        paths, labels = [], []
        for name in classes:
            for entry in meta[part].get(name, []):
                paths.append(root / "images" / f"{entry}.jpg")
                labels.append(class_to_idx[name])
        return paths, labels

    train, test = split("train"), split("test")
    missing = [p for p in (train[0][:1] + test[0][:1]) if not p.is_file()]
    if missing:  # one spot check per split: a stat of 101,000 files would slow every start
        raise not_found(
            "Food-101 images",
            [root / "images"],
            [str(p.relative_to(root)) for p in missing],
            [f"re-extract food-101.tar.gz ({FOOD_URL}) so that {root}/images/<class>/<id>.jpg exist"],
        )
    return file_splits(config, train=train, test=test, num_classes=len(classes), class_names=classes)
