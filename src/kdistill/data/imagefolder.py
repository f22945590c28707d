"""Image-file datasets: ImageNet-style class folders, and the helpers the other file readers share.

``imagefolder`` reads ``root/train/<class>/*`` and ``root/val/<class>/*`` (and an optional
``root/test/<class>/*``); classes are the sorted sub-folder names of ``train/``. With a ``test/``
folder, ``val/`` is the official validation split and ``test/`` the test split; without one,
``val/`` is the test split (the ImageNet convention: accuracies are reported on val) and a
validation split of 10% of train is carved by :func:`kdistill.data.build_data`.
``imagenet`` is the same reader for the ILSVRC-2012 layout torchvision's ``ImageNet`` prepares
(``train/<wnid>/``, ``val/<wnid>/``), with a default carved validation split of 10,000 images.

Images are decoded lazily with PIL, converted to RGB and normalised with the ImageNet mean/std.
``data.image_size`` defaults to 224. How an image of arbitrary size reaches the preset
(:mod:`kdistill.data.transforms`) depends on the preset:

- ``imagenet`` / ``inception``: the full-resolution image goes to the preset (random-resized crop;
  eval resize to size/0.875 + centre crop);
- ``resize_crop`` (seed 000): the image is first squashed to (1.25 size)^2, so the preset's train
  random crop and eval central 0.875 crop act as in seed 000's Keras recipe;
- every other preset (``none``, ``crop_flip``, ...): the short side is resized to ``size`` and the
  centre ``size`` x ``size`` square is cropped, then the preset runs at that native size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from kdistill.config import DataConfig
from kdistill.contracts import DatasetNotFoundError
from kdistill.data.registry import DatasetSplits, register_dataset
from kdistill.data.transforms import build_transforms, train_transform_is_random

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DEFAULT_IMAGE_SIZE = 224
CACHE_DIR = Path("~/.cache/kdistill").expanduser()

FULL_RESOLUTION_PRESETS = {"imagenet", "inception"}  # their transforms take images of any size
SQUASH_PRESETS = {"resize_crop"}  # seed 000: squash to a square first (tf.image.resize)


def default_roots(config: DataConfig, *subfolders: str) -> list[Path]:
    """Candidate dataset roots: ``data.root`` itself, then ``data.root/<sub>`` and the cache's ``<sub>``."""
    candidates: list[Path] = []
    if config.root:
        root = Path(config.root).expanduser()
        candidates.append(root)
        candidates += [root / sub for sub in subfolders]
    candidates += [CACHE_DIR / sub for sub in subfolders]
    return list(dict.fromkeys(candidates))


def download_root(config: DataConfig) -> Path:
    """Where ``data.download`` puts files: ``data.root``, else ``~/.cache/kdistill``."""
    return Path(config.root).expanduser() if config.root else CACHE_DIR


def locate(
    config: DataConfig,
    title: str,
    subfolder: str,
    required: Sequence[str],
    how: Sequence[str],
    download: Callable[[Path], None] | None = None,
) -> Path:
    """The first candidate root (:func:`default_roots`) holding every ``required`` path ("x/" = a folder);
    else, with ``data.download``, ``download(root)`` fills ``<root>/<subfolder>``; else DatasetNotFoundError."""
    candidates = default_roots(config, subfolder)
    for candidate in candidates:
        if all(
            (candidate / name).is_dir() if name.endswith("/") else (candidate / name).is_file() for name in required
        ):
            return candidate
    if config.download and download is not None:
        root = download_root(config)
        download(root)
        return root / subfolder
    raise not_found(title, candidates, required, how)


def not_found(
    title: str, looked: Sequence[Path | str], required: Sequence[str], how: Sequence[str]
) -> DatasetNotFoundError:
    """A DatasetNotFoundError naming where we looked, which files were required and how to get them."""
    lines = [
        f"{title} not found. Looked for {', '.join(required)} in:",
        *[f"  {place}" for place in looked],
        "Get it with one of:",
        *[f"  {line}" for line in how],
    ]
    return DatasetNotFoundError("\n".join(lines))


class SquareCenter:
    """PIL -> PIL: resize the short side to ``size`` and crop the centre ``size`` x ``size`` square."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.ops = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])

    def __call__(self, image: Image.Image) -> Image.Image:
        return self.ops(image)


class Squash:
    """PIL -> PIL: resize to ``size`` x ``size`` ignoring the aspect ratio."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.resize((self.size, self.size), Image.Resampling.BILINEAR)


class LoadImage:
    """Path -> tensor: open with PIL (JPEG draft decoding when we downscale anyway), RGB, prepare, preset."""

    def __init__(self, prepare: Callable | None, transform: Callable, draft: int | None) -> None:
        self.prepare, self.transform, self.draft = prepare, transform, draft

    def __call__(self, path: str | Path) -> Tensor:
        with Image.open(path) as opened:
            if self.draft is not None and opened.format == "JPEG":
                opened.draft("RGB", (self.draft, self.draft))  # decodes at >= draft on both sides
            image = opened.convert("RGB")
        if self.prepare is not None:
            image = self.prepare(image)
        return self.transform(image)


def file_transforms(config: DataConfig, mean=IMAGENET_MEAN, std=IMAGENET_STD, default_size: int = DEFAULT_IMAGE_SIZE):
    """(train loader, eval loader, image size) for image-file datasets: path -> normalised (3, S, S)."""
    size = config.image_size or default_size
    prepare: Callable[[Image.Image], Image.Image] | None
    if config.augment in FULL_RESOLUTION_PRESETS:
        prepare, native, draft = None, size, None
    elif config.augment in SQUASH_PRESETS:
        native = round(size * 1.25)
        prepare, draft = Squash(native), native
    else:
        prepare, native, draft = SquareCenter(size), size, size
    train, evaluate = build_transforms(config.augment, size, native, mean, std)
    return LoadImage(prepare, train, draft), LoadImage(prepare, evaluate, draft), size


class ImageFileDataset(Dataset):
    """Images read lazily from files: items are (transformed image tensor, int label)."""

    def __init__(
        self, paths: Sequence[Path | str], labels: Sequence[int], load: Callable[[Path | str], Tensor]
    ) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} image paths but {len(labels)} labels")
        self.paths = [str(p) for p in paths]
        self.labels = torch.as_tensor(list(labels), dtype=torch.int64)
        self.load = load

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return self.load(self.paths[index]), self.labels[index]


def file_splits(
    config: DataConfig,
    train: tuple[Sequence, Sequence[int]],
    test: tuple[Sequence, Sequence[int]],
    num_classes: int,
    val: tuple[Sequence, Sequence[int]] | None = None,
    class_names: list[str] | None = None,
    default_val_size: int | None = None,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    default_size: int = DEFAULT_IMAGE_SIZE,
) -> DatasetSplits:
    """DatasetSplits of lazily read image files; ``default_val_size`` defaults to 10% of train."""
    train_load, eval_load, size = file_transforms(config, mean, std, default_size)
    augmented = train_transform_is_random(config)
    train_set = ImageFileDataset(*train, train_load)
    return DatasetSplits(
        train=train_set,
        train_eval=ImageFileDataset(*train, eval_load) if augmented else train_set,
        val=ImageFileDataset(*val, eval_load) if val is not None else None,
        test=ImageFileDataset(*test, eval_load),
        num_classes=num_classes,
        input_shape=(3, size, size),
        class_names=class_names,
        train_augmented=augmented,
        default_val_size=default_val_size if default_val_size is not None else max(1, len(train[0]) // 10),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )


def scan_class_folders(
    folder: Path, class_to_idx: dict[str, int] | None = None
) -> tuple[list[Path], list[int], list[str]]:
    """(paths, labels, classes) of ``folder/<class>/<image>``; with ``class_to_idx`` the classes are fixed."""
    classes = sorted(entry.name for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if class_to_idx is None:
        class_to_idx = {name: i for i, name in enumerate(classes)}
    else:
        unknown = [name for name in classes if name not in class_to_idx]
        if unknown:
            raise ValueError(f"{folder} has class folders not in train/: {', '.join(unknown[:10])}")
    paths, labels = [], []
    for name in classes:
        for path in sorted((folder / name).rglob("*")):
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                paths.append(path)
                labels.append(class_to_idx[name])
    if not paths:
        raise DatasetNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in class folders under {folder}")
    return paths, labels, sorted(class_to_idx, key=class_to_idx.__getitem__)


def _folder_splits(config: DataConfig, root: Path, default_val_size: int | None) -> DatasetSplits:
    train_paths, train_labels, classes = scan_class_folders(root / "train")
    class_to_idx = {name: i for i, name in enumerate(classes)}
    val_folder = scan_class_folders(root / "val", class_to_idx)[:2]
    val: tuple[list[Path], list[int]] | None = val_folder
    if (root / "test").is_dir():
        test = scan_class_folders(root / "test", class_to_idx)[:2]
    else:
        test, val = val_folder, None  # val/ is the evaluation split; a validation split is carved from train
    return file_splits(
        config,
        train=(train_paths, train_labels),
        val=val,
        test=test,
        num_classes=len(classes),
        class_names=classes,
        default_val_size=default_val_size,
    )


FOLDER_HOW = [
    "--set data.root=DIR   (DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg, optionally DIR/test/<class>/*)",
]


@register_dataset(
    "imagefolder",
    description="ImageNet-style class folders root/train/<class>/, root/val/<class>/ (+ optional root/test/); "
    "val is the test split unless test/ exists; 10% of train carved for validation; 224 px default",
    how_to_get="--set data.root=DIR with DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg",
)
def imagefolder(config: DataConfig) -> DatasetSplits:
    if not config.root:
        raise not_found("Image folders", ["(data.root is not set)"], ["train/", "val/"], FOLDER_HOW)
    root = Path(config.root).expanduser()
    if not ((root / "train").is_dir() and (root / "val").is_dir()):
        raise not_found("Image folders", [root], ["train/<class>/", "val/<class>/"], FOLDER_HOW)
    return _folder_splits(config, root, default_val_size=None)


IMAGENET_HOW = [
    "download ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz from "
    "https://image-net.org/download.php (needs an account; there is no automatic download),",
    "  then torchvision.datasets.ImageNet(DIR, split='train') and split='val' unpack them into DIR/train/<wnid>/, "
    "DIR/val/<wnid>/",
    "--set data.root=DIR   (DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG)",
]


@register_dataset(
    "imagenet",
    description="ImageNet-1k (ILSVRC-2012) in class folders: 1,281,167 train / 50,000 val (used as test), "
    "1000 classes; "
    "10,000 train images carved for validation; 224 px default",
    how_to_get="image-net.org (account needed) + torchvision.datasets.ImageNet to unpack; --set data.root=DIR",
)
def imagenet(config: DataConfig) -> DatasetSplits:
    candidates = default_roots(config, "imagenet", "ImageNet")
    for candidate in candidates:
        if (candidate / "train").is_dir() and (candidate / "val").is_dir():
            return _folder_splits(config, candidate, default_val_size=10_000)
    if config.download:
        raise not_found(
            "ImageNet (data.download=true cannot fetch it: ImageNet needs an account)",
            candidates,
            ["train/<wnid>/", "val/<wnid>/"],
            IMAGENET_HOW,
        )
    raise not_found("ImageNet", candidates, ["train/<wnid>/", "val/<wnid>/"], IMAGENET_HOW)
