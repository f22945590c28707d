"""What a dataset builder returns, and the registry dataset families add themselves to."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch.utils.data import Dataset

from kdistill.config import DataConfig
from kdistill.registry import Registry


@dataclass
class DatasetSplits:
    """What a dataset builder returns. ``train`` and ``train_eval`` index the same samples."""

    train: Dataset  # with the train (augmenting) transform
    train_eval: Dataset  # same samples, eval transform (used for a carved validation split)
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W) after transforms
    val: Dataset | None = None  # an official validation split, if the dataset has one
    class_names: list[str] | None = None
    train_augmented: bool = False  # whether the train transform is random
    default_val_size: int = 5000  # carved from train when there is no official val split
    mean: tuple[float, ...] | None = None  # per-channel normalisation the transforms applied
    std: tuple[float, ...] | None = None


@dataclass
class Data:
    """The resolved splits of one run."""

    train: Dataset  # yields (input, target, index)
    val: Dataset | None
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    train_augmented: bool
    class_names: list[str] | None = None
    mean: tuple[float, ...] | None = None  # per-channel input normalisation: x = (pixel/255 - mean) / std
    std: tuple[float, ...] | None = None


DatasetBuilder = Callable[[DataConfig], DatasetSplits]
DATASETS: Registry[DatasetBuilder] = Registry("dataset")
DATASET_INFO: dict[str, dict[str, str]] = {}


def register_dataset(
    name: str, description: str = "", how_to_get: str = ""
) -> Callable[[DatasetBuilder], DatasetBuilder]:
    def decorator(builder: DatasetBuilder) -> DatasetBuilder:
        DATASET_INFO[name] = {"description": description, "how_to_get": how_to_get}
        return DATASETS.register(name)(builder)

    return decorator
