"""Oxford-IIIT Pets (Parkhi et al. 2012): 37 cat and dog breeds, from the official files.

Files (https://www.robots.ox.ac.uk/~vgg/data/pets/): ``images/<Breed_name>_<n>.jpg`` (from
``images.tar.gz``) and ``annotations/trainval.txt``, ``annotations/test.txt`` (from
``annotations.tar.gz``), whose lines read ``Abyssinian_100 1 1 1``: image name, class id 1..37
(shifted to 0..36), species (1 cat, 2 dog), breed id within the species. Lines starting with ``#``
are comments. Looked for in ``data.root``, ``data.root/oxford-iiit-pet`` (torchvision's layout) and
``~/.cache/kdistill/oxford-iiit-pet``; ``data.download: true`` lets torchvision's ``OxfordIIITPet``
download them there.

Splits: the official trainval 3,680 / test 3,669. There is no official validation split:
:func:`kdistill.data.build_data` carves 10% of trainval (368). Class names are the breeds as
torchvision spells them (``Abyssinian``, ``American Bulldog``, ...). Images are read lazily with
PIL; ImageNet mean/std; ``data.image_size`` defaults to 224.
"""

from __future__ import annotations

from pathlib import Path

from kdistill.config import DataConfig
from kdistill.data.imagefolder import file_splits, locate, not_found
from kdistill.data.registry import DatasetSplits, register_dataset

PETS_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/"
NUM_CLASSES = 37


def _download(root: Path) -> None:
    from torchvision.datasets import OxfordIIITPet

    OxfordIIITPet(str(root), split="trainval", download=True)


def _find(config: DataConfig) -> Path:
    how = [
        "--set data.download=true   (torchvision.datasets.OxfordIIITPet downloads images.tar.gz and annotations.tar.gz "
        "to data.root/oxford-iiit-pet or ~/.cache/kdistill/oxford-iiit-pet)",
        f"download images.tar.gz and annotations.tar.gz from {PETS_URL}, untar both into DIR, then "
        "--set data.root=DIR   (DIR/images/*.jpg, DIR/annotations/trainval.txt)",
    ]
    required = ["images/", "annotations/trainval.txt", "annotations/test.txt"]
    return locate(config, "Oxford-IIIT Pets", "oxford-iiit-pet", required, how, _download)


def read_annotations(path: Path) -> list[tuple[str, int]]:
    """(image name, class 0..36) per line of trainval.txt / test.txt."""
    entries = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split()
            if len(fields) < 2 or not fields[1].isdigit() or not 1 <= int(fields[1]) <= NUM_CLASSES:
                raise ValueError(f"{path}:{number}: expected 'Name_123 <class 1..37> <species> <breed>', got {line!r}")
            entries.append((fields[0], int(fields[1]) - 1))
    return entries


@register_dataset(
    "pets",
    description="Oxford-IIIT Pets: official 3,680 trainval / 3,669 test images, 37 breeds (10% of trainval carved "
    "for val); 224 px default",
    how_to_get=f"--set data.download=true (torchvision OxfordIIITPet), or the files of {PETS_URL} under data.root",
)
def pets(config: DataConfig) -> DatasetSplits:
    root = _find(config)
    trainval = read_annotations(root / "annotations" / "trainval.txt")
    test = read_annotations(root / "annotations" / "test.txt")
    names: dict[int, str] = {}
    for image, label in trainval + test:
        names.setdefault(label, " ".join(part.title() for part in image.rsplit("_", 1)[0].split("_")))
    class_names = [names.get(i, str(i)) for i in range(NUM_CLASSES)]

    def split(entries):
        paths = [root / "images" / f"{image}.jpg" for image, _ in entries]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise not_found(
                f"Oxford-IIIT Pets images ({len(missing)} missing)",
                [root / "images"],
                [p.name for p in missing[:3]],
                [f"re-extract images.tar.gz from {PETS_URL} into {root}"],
            )
        return paths, [label for _, label in entries]

    return file_splits(
        config, train=split(trainval), test=split(test), num_classes=NUM_CLASSES, class_names=class_names
    )
