"""Dataset readers on small files written in each real on-disk format.

Each test writes a few samples the way the official release (or torchvision's download) lays them
out, builds them through ``kdistill.data.build_data`` and checks split sizes, labels, pixel
orientation (a known asymmetric image must arrive where it was drawn), input shape, normalisation
and the use of official validation splits. Missing files must raise ``DatasetNotFoundError`` with
instructions for getting them.
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdistill.config import DataConfig
from kdistill.contracts import DatasetNotFoundError
from kdistill.data import DATASET_INFO, build_data
from kdistill.data.cifar import CIFAR
from kdistill.data.emnist import EMNIST_MEAN, EMNIST_SPLITS, EMNIST_STD
from kdistill.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD
from kdistill.data.mnist_like import read_idx

from helpers import COL, ROW, marker, write_cifar


def normalised(value: float, mean: float, std: float) -> float:
    return (value / 255.0 - mean) / std


def build(name: str, root: Path | str, **kwargs):
    return build_data(DataConfig(name=name, root=str(root), **kwargs), seed=0)


@pytest.fixture(autouse=True)
def no_default_locations(tmp_path, monkeypatch):
    """Keep the user's ~/.cache/kdistill and ./data out of the tests."""
    import kdistill.data.emnist as emnist
    import kdistill.data.imagefolder as imagefolder

    monkeypatch.setattr(imagefolder, "CACHE_DIR", tmp_path / "no-cache")
    monkeypatch.setattr(emnist, "CACHE_DIR", tmp_path / "no-cache")
    monkeypatch.chdir(tmp_path)


# ----------------------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("name, per_batch", [("cifar10", 2), ("cifar100", 10)])
def test_cifar_pickle_batches(tmp_path, name, per_batch):
    write_cifar(tmp_path, name, per_batch, test_count=3)
    spec = CIFAR[name]
    data = build(name, tmp_path, val_size=0)
    assert len(data.train) == 10 and data.val is None and len(data.test) == 3
    assert data.input_shape == (3, 32, 32) and data.num_classes == spec["num_classes"]
    assert data.class_names[:2] == ["class_0", "class_1"] and not data.train_augmented

    image, label, index = data.train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and (label, index) == (0, 0)
    mean, std = spec["mean"], spec["std"]
    assert image[0, ROW, COL].item() == pytest.approx(normalised(255, mean[0], std[0]), abs=1e-5)
    assert image[0, COL, ROW].item() == pytest.approx(normalised(0, mean[0], std[0]), abs=1e-5)
    assert torch.allclose(image[2], torch.full((32, 32), normalised(77, mean[2], std[2])), atol=1e-5)
    labels = [data.train[i][1] for i in range(len(data.train))]
    if name == "cifar10":  # batch k holds labels 3k, 3k+1
        assert labels == [0, 1, 3, 4, 6, 7, 9, 0, 2, 3]
    else:
        assert labels == list(range(10))
    assert [data.test[i][1] for i in range(3)] == [7, 8, 9]


def test_cifar_default_val_split_root_forms_and_augmentation(tmp_path):
    write_cifar(tmp_path, "cifar10", 4, test_count=2)
    data = build("cifar10", tmp_path)  # default: 10% of train carved for validation
    assert (len(data.train), len(data.val), len(data.test)) == (18, 2, 2)
    direct = build("cifar10", tmp_path / "cifar-10-batches-py", val_size=0)  # root = the batch folder itself
    assert len(direct.train) == 20
    augmented = build("cifar10", tmp_path, val_size=0, augment="cifar")
    assert augmented.train_augmented and augmented.train[0][0].shape == (3, 32, 32)
    # the test split is never augmented: still exactly the written image
    assert build("cifar10", tmp_path, augment="cifar").test[0][0][0, ROW, COL].item() > 2.0


# ---------------------------------------------------------------------------------------- EMNIST


def emnist_rows(images: np.ndarray) -> np.ndarray:
    """Upright (N, 28, 28) -> the stored (N, 784) rows: each image column-major, as in the official files."""
    return np.stack([image.flatten(order="F") for image in images])


def emnist_images(count: int, seed: int) -> np.ndarray:
    images = np.random.default_rng(seed).integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    images[0] = marker()
    return images


def write_emnist_mat(path: Path, split: str, train_labels, test_labels) -> None:
    """The MATLAB layout of the official matlab.zip: struct dataset.{train,test}.{images,labels,writers}, mapping."""
    from scipy.io import savemat

    def part(labels, seed):
        labels = np.asarray(labels, dtype=np.float64).reshape(-1, 1)  # the official files store doubles
        return {
            "images": emnist_rows(emnist_images(len(labels), seed)),
            "labels": labels,
            "writers": np.zeros((len(labels), 1)),
        }

    if split == "letters":
        mapping = np.array([[k, 64 + k, 96 + k] for k in range(1, 27)], dtype=np.float64)
    else:
        names = EMNIST_SPLITS[split]["names"]
        mapping = np.array([[k, ord(n)] for k, n in enumerate(names)], dtype=np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {"dataset": {"train": part(train_labels, 1), "test": part(test_labels, 2), "mapping": mapping}})


def test_emnist_letters_mat_file_orientation_labels_and_mapping(tmp_path):
    write_emnist_mat(tmp_path / "matlab" / "emnist-letters.mat", "letters", [1, 2, 26, 5, 1, 3], [26, 1, 2])
    data = build("emnist_letters", tmp_path, val_size=0)
    assert (len(data.train), len(data.test)) == (6, 3)
    assert data.num_classes == 26 and data.input_shape == (1, 28, 28)
    assert data.class_names[0] == "A/a" and data.class_names[25] == "Z/z"
    assert [data.train[i][1] for i in range(6)] == [0, 1, 25, 4, 0, 2]  # letter 1 (A) -> class 0
    assert [data.test[i][1] for i in range(3)] == [25, 0, 1]

    image = data.train[0][0]
    bright, dark = normalised(255, EMNIST_MEAN[0], EMNIST_STD[0]), normalised(0, EMNIST_MEAN[0], EMNIST_STD[0])
    assert image[0, ROW, COL].item() == pytest.approx(bright, abs=1e-5)  # upright: not at (COL, ROW)
    assert image[0, COL, ROW].item() == pytest.approx(dark, abs=1e-5)
    assert (image > dark + 1e-3).sum().item() == 1
    expected = torch.from_numpy(emnist_images(3, 2)[1]).float().div(255).sub(EMNIST_MEAN[0]).div(EMNIST_STD[0])
    assert torch.allclose(data.test[1][0][0], expected, atol=1e-5)  # a whole random image, upright

    # data.root may also name the .mat file itself (seed 002 passes --file data/matlab/emnist-letters.mat)
    direct = build("emnist_letters", tmp_path / "matlab" / "emnist-letters.mat")
    assert (len(direct.train), len(direct.val)) == (6 - 1, 1)  # 10% of train carved (at least one)


def test_emnist_seed_002_relative_path(tmp_path):
    write_emnist_mat(tmp_path / "data" / "matlab" / "emnist-letters.mat", "letters", [1, 2, 3], [4])
    data = build_data(DataConfig(name="emnist_letters", val_size=0), seed=0)  # found in ./data/matlab (cwd)
    assert len(data.train) == 3 and data.test[0][1] == 3


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def test_an_idx_file_is_decoded_once_per_process_until_it_changes(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    write_idx(path, np.array([1, 2, 3]), compress=True)
    first = read_idx(str(path) + ".gz")
    assert first.tolist() == [1, 2, 3] and not first.flags.writeable  # shared between readers: read-only
    assert read_idx(str(path) + ".gz") is first  # the second run of a sweep or a demo reads it from memory
    write_idx(path, np.array([4, 5, 6, 7]), compress=True)  # the file changed: it is read again
    assert read_idx(str(path) + ".gz").tolist() == [4, 5, 6, 7]


def write_emnist_idx(directory: Path, split: str, train_labels, test_labels, compress: bool = True) -> None:
    """torchvision's EMNIST/raw files: IDX images stored transposed (as the .mat rows are)."""
    for part, labels, seed in (("train", train_labels, 1), ("test", test_labels, 2)):
        stored = emnist_images(len(labels), seed).transpose(0, 2, 1)
        write_idx(directory / f"emnist-{split}-{part}-images-idx3-ubyte", stored, compress)
        write_idx(directory / f"emnist-{split}-{part}-labels-idx1-ubyte", np.asarray(labels, dtype=np.uint8), compress)


@pytest.mark.parametrize(
    "split, train_labels, expected, compress",
    [
        ("letters", [1, 26, 13, 2], [0, 25, 12, 1], True),
        ("balanced", [0, 46, 10, 36], [0, 46, 10, 36], False),
        ("digits", [9, 0, 3, 3], [9, 0, 3, 3], True),
    ],
)
def test_emnist_torchvision_idx_files(tmp_path, split, train_labels, expected, compress):
    write_emnist_idx(tmp_path / "EMNIST" / "raw", split, train_labels, train_labels[:2], compress)
    data = build(f"emnist_{split}", tmp_path, val_size=0)
    spec = EMNIST_SPLITS[split]
    assert data.num_classes == spec["classes"] and len(data.class_names) == spec["classes"]
    assert [data.train[i][1] for i in range(4)] == expected and len(data.test) == 2
    image = data.train[0][0]
    assert image[0, ROW, COL] > 2.0 and image[0, COL, ROW] < 0  # upright after the transpose


def test_emnist_registry_has_every_split_with_its_class_count():
    assert {s: v["classes"] for s, v in EMNIST_SPLITS.items()} == {
        "letters": 26, "balanced": 47, "byclass": 62, "bymerge": 47, "digits": 10, "mnist": 10,
    }  # fmt: skip
    for split in EMNIST_SPLITS:
        assert f"emnist_{split}" in DATASET_INFO
        assert len(EMNIST_SPLITS[split]["names"]) == EMNIST_SPLITS[split]["classes"]


# ------------------------------------------------------------------------------- image-file sets


def write_jpeg(path: Path, size=(48, 32), color=(200, 100, 50), top=None) -> None:
    """A solid-colour JPEG (width, height); with ``top`` the top half has that colour instead."""
    array = np.empty((size[1], size[0], 3), dtype=np.uint8)
    array[:] = color
    if top is not None:
        array[: size[1] // 2] = top
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=95)


def check_colour(image: torch.Tensor, color, tolerance: float = 0.1) -> None:
    """Centre pixel of a normalised image equals ``color`` after ImageNet normalisation (JPEG tolerance)."""
    centre = image[:, image.shape[1] // 2, image.shape[2] // 2]
    for c in range(3):
        assert centre[c].item() == pytest.approx(normalised(color[c], IMAGENET_MEAN[c], IMAGENET_STD[c]), abs=tolerance)


def write_flowers(root: Path, labels: list[int], trnid, valid, tstid) -> None:
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    for number, label in enumerate(labels, 1):
        write_jpeg(root / "jpg" / f"image_{number:05d}.jpg", color=(2 * label, 100, 50))
    savemat(str(root / "imagelabels.mat"), {"labels": np.array([labels], dtype=np.uint8)})
    savemat(str(root / "setid.mat"), {key: np.array([ids], dtype=np.uint16) for key, ids in
                                      (("trnid", trnid), ("valid", valid), ("tstid", tstid))})  # fmt: skip


def test_flowers102_official_splits_labels_and_normalisation(tmp_path):
    labels = [1, 102, 5, 7, 50, 1, 2]  # image_00001 .. image_00007, classes 1..102
    write_flowers(tmp_path / "flowers-102", labels, trnid=[1, 2, 7], valid=[3, 4], tstid=[6, 5])
    data = build("flowers102", tmp_path, image_size=32)
    assert (len(data.train), len(data.val), len(data.test)) == (3, 2, 2)  # official val used, nothing carved
    assert data.num_classes == 102 and data.input_shape == (3, 32, 32)
    assert [data.train[i][1] for i in range(3)] == [0, 101, 1]
    assert [data.val[i][1] for i in range(2)] == [4, 6]
    assert [data.test[i][1] for i in range(2)] == [0, 49]
    image = data.train[1][0]
    assert image.shape == (3, 32, 32)
    check_colour(image, (204, 100, 50))
    assert data.class_names is None or len(data.class_names) == 102


def test_flowers102_default_size_and_missing_image(tmp_path):
    write_flowers(tmp_path, [3, 4], trnid=[1], valid=[2], tstid=[1])
    data = build("flowers102", tmp_path)  # root = the folder with jpg/ itself
    assert data.input_shape == (3, 224, 224) and data.train[0][0].shape == (3, 224, 224)
    (tmp_path / "jpg" / "image_00002.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match="image_00002.jpg"):
        build("flowers102", tmp_path)


@pytest.mark.parametrize(
    "augment, size", [("imagenet", 24), ("inception", 24), ("resize_crop", 24), ("crop_flip", 24), ("cifar", 32)]
)
def test_file_datasets_give_square_images_for_every_preset(tmp_path, augment, size):
    write_flowers(tmp_path, [1, 2, 3], trnid=[1, 2], valid=[3], tstid=[3])  # 48x32 (non-square) JPEGs
    data = build("flowers102", tmp_path, image_size=size, augment=augment)
    assert data.train_augmented and data.input_shape == (3, size, size)
    for split in (data.train, data.val, data.test):
        assert split[0][0].shape == (3, size, size)


def test_file_dataset_orientation(tmp_path):
    # top half white, bottom half black: must stay top/bottom (no transpose or flip on the eval path)
    root = tmp_path / "folders"
    for split in ("train", "val"):
        write_jpeg(root / split / "a" / "x.jpg", size=(32, 32), color=(0, 0, 0), top=(255, 255, 255))
        write_jpeg(root / split / "b" / "y.jpg", size=(32, 32), color=(0, 0, 0))
    data = build("imagefolder", root, image_size=32, val_size=0)
    image = data.test[0][0]
    assert image[:, 2, 16].min() > 1.5 and image[:, 29, 16].max() < -1.5


def write_pets(root: Path) -> None:
    trainval = [
        "Abyssinian_100 1 1 1",
        "american_bulldog_10 2 2 1",
        "Abyssinian_7 1 1 1",
        "yorkshire_terrier_3 37 2 25",
    ]
    test = ["american_bulldog_11 2 2 1", "yorkshire_terrier_9 37 2 25"]
    for line in trainval + test:
        name, label = line.split()[:2]
        write_jpeg(root / "images" / f"{name}.jpg", color=(5 * int(label), 80, 160))
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "trainval.txt").write_text("\n".join(trainval) + "\n")
    (root / "annotations" / "test.txt").write_text("\n".join(test) + "\n")


def test_pets_annotation_files(tmp_path):
    write_pets(tmp_path / "oxford-iiit-pet")
    data = build("pets", tmp_path, image_size=32, val_size=0)
    assert (len(data.train), len(data.test), data.num_classes) == (4, 2, 37)
    assert [data.train[i][1] for i in range(4)] == [0, 1, 0, 36]
    assert [data.test[i][1] for i in range(2)] == [1, 36]
    assert data.class_names[0] == "Abyssinian" and data.class_names[1] == "American Bulldog"
    assert data.class_names[36] == "Yorkshire Terrier"
    check_colour(data.train[3][0], (185, 80, 160))
    carved = build("pets", tmp_path, image_size=32)  # no official val: 10% of trainval (at least 1) carved
    assert (len(carved.train), len(carved.val)) == (3, 1)


def write_food(root: Path) -> dict:
    meta = {
        "train": {
            "apple_pie": ["apple_pie/101", "apple_pie/102"],
            "sushi": ["sushi/7"],
            "baby_back_ribs": ["baby_back_ribs/5"],
        },
        "test": {"apple_pie": ["apple_pie/103"], "sushi": ["sushi/8"], "baby_back_ribs": []},
    }
    (root / "meta").mkdir(parents=True)
    for part, entries in meta.items():
        (root / "meta" / f"{part}.json").write_text(json.dumps(entries))
        for name, files in entries.items():
            for file in files:
                write_jpeg(
                    root / "images" / f"{file}.jpg",
                    size=(40, 56),
                    color=(30, 60, 90) if name == "sushi" else (90, 90, 90),
                )
    (root / "meta" / "classes.txt").write_text("apple_pie\nbaby_back_ribs\nsushi\n")
    return meta


def test_food101_meta_json(tmp_path):
    write_food(tmp_path / "food-101")
    data = build("food101", tmp_path, image_size=32, val_size=0)
    assert data.class_names == ["apple_pie", "baby_back_ribs", "sushi"] and data.num_classes == 3
    assert [data.train[i][1] for i in range(4)] == [0, 0, 1, 2]
    assert [data.test[i][1] for i in range(2)] == [0, 2]
    check_colour(data.test[1][0], (30, 60, 90))
    assert data.input_shape == (3, 32, 32)
    (tmp_path / "food-101" / "images" / "apple_pie" / "101.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match="apple_pie/101.jpg"):
        build("food101", tmp_path)


def write_folders(root: Path, with_test: bool) -> None:
    splits = ["train", "val"] + (["test"] if with_test else [])
    for split in splits:
        for cls, color in (("n01", (250, 0, 0)), ("n02", (0, 250, 0)), ("n03", (0, 0, 250))):
            count = 4 if split == "train" else 1
            for i in range(count):
                write_jpeg(root / split / cls / f"{i}.JPEG", size=(36, 30), color=color)
    Image.new("RGB", (30, 30), (10, 10, 10)).save(root / "train" / "n03" / "extra.png")  # other extensions count
    (root / "train" / "n03" / "notes.txt").write_text("not an image")


def test_imagefolder_without_test_uses_val_as_test(tmp_path):
    write_folders(tmp_path, with_test=False)
    data = build("imagefolder", tmp_path, image_size=32)
    assert data.class_names == ["n01", "n02", "n03"] and data.num_classes == 3
    assert len(data.test) == 3 and len(data.val) + len(data.train) == 13 and len(data.val) == 1  # 10% of 13
    assert [data.test[i][1] for i in range(3)] == [0, 1, 2]
    check_colour(data.test[1][0], (0, 250, 0), tolerance=0.15)


def test_imagefolder_with_test_uses_official_val_and_imagenet_reader(tmp_path):
    write_folders(tmp_path, with_test=True)
    data = build("imagefolder", tmp_path, image_size=32)
    assert (len(data.train), len(data.val), len(data.test)) == (13, 3, 3)
    imagenet = build("imagenet", tmp_path, image_size=32, augment="imagenet")
    assert imagenet.train_augmented and imagenet.input_shape == (3, 32, 32) and len(imagenet.val) == 3
    (tmp_path / "val" / "n04").mkdir()
    with pytest.raises(ValueError, match="n04"):
        build("imagefolder", tmp_path)


# ----------------------------------------------------------------------------------- missing files


@pytest.mark.parametrize(
    "name, must_mention",
    [
        ("cifar10", ["cifar-10-python.tar.gz", "torchvision.datasets.CIFAR10", "data.download=true", "data.root="]),
        ("cifar100", ["cifar-100-python.tar.gz", "torchvision.datasets.CIFAR100", "data.download=true", "data.root="]),
        (
            "emnist_letters",
            ["emnist-letters.mat", "matlab.zip", "torchvision.datasets.EMNIST", "data.download=true", "data.root="],
        ),
        ("emnist_byclass", ["emnist-byclass.mat", "gzip.zip", "split='byclass'"]),
        (
            "flowers102",
            [
                "setid.mat",
                "robots.ox.ac.uk/~vgg/data/flowers/102",
                "torchvision.datasets.Flowers102",
                "data.download=true",
            ],
        ),
        (
            "pets",
            [
                "annotations/trainval.txt",
                "robots.ox.ac.uk/~vgg/data/pets",
                "torchvision.datasets.OxfordIIITPet",
                "data.root=",
            ],
        ),
        ("food101", ["meta/train.json", "food-101.tar.gz", "torchvision.datasets.Food101", "data.download=true"]),
        ("imagefolder", ["train/<class>", "data.root="]),
        ("imagenet", ["image-net.org", "torchvision.datasets.ImageNet", "data.root="]),
    ],
)
def test_missing_files_say_where_we_looked_and_how_to_get_them(tmp_path, name, must_mention):
    missing = tmp_path / "nothing-here"
    with pytest.raises(DatasetNotFoundError) as error:
        build(name, missing)
    message = str(error.value)
    assert str(missing) in message
    for text in must_mention:
        assert text in message, (text, message)
    assert DATASET_INFO[name]["how_to_get"] and DATASET_INFO[name]["description"]
