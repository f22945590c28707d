"""Zoo and outside models inside real runs: a CIFAR ResNet trained on Fashion-MNIST (1-channel stem),
timm models as teacher and student of `kdistill distill`."""

from __future__ import annotations

from kdistill.cli import main
from kdistill.track import read_summary

FMNIST = [
    "data.name=fashion_mnist",
    "data.train_subset=2000",
    "data.test_subset=1000",
    "data.batch_size=64",
    "train.progress=false",
    "optim.lr=0.05",
]


def _sets(values):
    return [arg for value in values for arg in ("--set", value)]


def test_zoo_resnet_trains_on_fashion_mnist(tmp_path):
    assert (
        main(
            ["train", *_sets([*FMNIST, f"output_dir={tmp_path}", "name=r8", "student.name=resnet8", "train.epochs=2"])]
        )
        == 0
    )
    summary = read_summary(tmp_path / "r8")
    assert summary["final_test_acc"] > 40.0  # chance is 10%; 60 steps of a CIFAR ResNet on 1x28x28 inputs
    assert summary["student_parameters"] < 90_000  # resnet8 with a 1-channel stem and 10 classes


def test_timm_models_as_teacher_and_student(tmp_path):
    common = [*FMNIST, f"output_dir={tmp_path}", "train.epochs=1"]
    assert main(["train", *_sets([*common, "name=timm_teacher", "student.name=timm:test_resnet"])]) == 0
    assert (
        main(
            [
                "distill",
                *_sets(
                    [
                        *common,
                        "name=timm_student",
                        "student.name=timm:test_efficientnet",
                        "method.name=kd",
                        f"teacher.checkpoint={tmp_path / 'timm_teacher'}",
                    ]
                ),
            ]
        )
        == 0
    )
    summary = read_summary(tmp_path / "timm_student")
    assert summary["teacher_test_acc"] > 20.0 and summary["final_test_acc"] > 10.0
    assert 0.0 <= summary["final_test_agreement"] <= 100.0
