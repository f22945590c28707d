"""What the teacher cache saves on whole epochs and trials with real data loading (issue 15).

1. Augmented KD epoch (CIFAR-100 format files written here, RandomCrop + flip; resnet32x4 -> resnet8x4): the
   student alone (``ce``), KD with the live teacher, KD with a warm cache (filled by ``kdistill cache-teacher``).
2. Function matching epoch (Fashion-MNIST, Inception crop + flip + mixup on the device; CNN -> small CNN): the
   student alone on the same views (function matching's crop, flip and mixup of each batch, cross-entropy on the
   labels, no teacher: the ``funmatch_views_alone`` method registered here), funmatch live, funmatch from the
   warm cache.
3. Five trials of an augmented Fashion-MNIST KD run (crop + flip, CNN -> MLP) sharing one data stream
   (``data.stream_seed=0``): cached (the first trial pays the teacher) vs uncached, vs five student-alone runs.

Epoch costs are each run's ``train_time_s`` (the training loop with its data loading, not evaluation); arms are
interleaved per repetition and compared by the median of paired ratios. Teachers are randomly initialised: only
time is measured. Writes ``benchmarks/results/teacher_cache_speed.json`` and prints Markdown tables.

    .venv/bin/python benchmarks/teacher_cache_speed.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from kdistill.api import cache_teacher, fit  # noqa: E402  (after the path set-up above)
from kdistill.config import ModelConfig, load_config  # noqa: E402
from kdistill.contracts import Batch, StepOutput  # noqa: E402
from kdistill.engine.run_dir import read_metrics  # noqa: E402
from kdistill.methods.base import MethodTraits, register_method  # noqa: E402
from kdistill.methods.ce import cross_entropy_loss  # noqa: E402
from kdistill.methods.funmatch import FunctionMatching, FunMatchConfig  # noqa: E402
from kdistill.models import build_model  # noqa: E402

QUIET = {"log": lambda _: None}


@dataclass
class ViewsAloneConfig(FunMatchConfig):
    """Function matching's view settings; no teacher."""


@register_method("funmatch_views_alone")
class StudentAloneOnViews(FunctionMatching):
    """The student-alone arm of the function-matching epoch: the very views function matching makes (same
    augmentation code and cost), cross-entropy on the (unmixed) labels instead of the teacher's logits."""

    config_class = ViewsAloneConfig
    traits = MethodTraits(kind="labels", needs_teacher=False, max_teachers=0)

    def training_step(self, batch: Batch) -> StepOutput:
        logits = self.student(batch.inputs)  # (B, K)
        return StepOutput(logits=logits, losses={"ce": cross_entropy_loss(logits, batch.targets)})


def random_teacher(work: Path, name: str, kwargs: dict, classes: int, shape: tuple[int, int, int]) -> list[str]:
    """A randomly initialised teacher saved as a plain state dict, and the overrides that load it."""
    path = work / f"teacher_{name}.pt"
    torch.manual_seed(0)
    torch.save(build_model(ModelConfig(name, kwargs), classes, shape).state_dict(), path)
    return [f"teacher.name={name}", f"teacher.kwargs={json.dumps(kwargs)}", f"teacher.checkpoint={path}"]


def fmnist_teacher(work: Path) -> list[str]:
    return random_teacher(work, "cnn", {"channels": [32, 64], "hidden": 512}, 10, (1, 28, 28))


def write_cifar100(root: Path, train: int, test: int) -> None:
    """Random images in the cifar-100-python pickle format (speed only: the content does not matter)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, count in (("train", train), ("test", test)):
        entry = {
            b"data": rng.integers(0, 256, size=(count, 3 * 32 * 32), dtype=np.uint8),
            b"fine_labels": [i % 100 for i in range(count)],
        }
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    names = [f"class_{i}".encode() for i in range(100)]
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": names}, protocol=2))


def epoch_time(config: str | None, overrides: list[str]) -> float:
    summary = fit(load_config(config, overrides), overwrite=True, **QUIET)
    return read_metrics(Path(summary["run_dir"]))[0]["train_time_s"]


def compare_epochs(config: str | None, alone: list[str], distil: list[str], repetitions: int) -> dict:
    """Epoch times of the student alone, distillation with the live teacher and with the warm cache."""
    cache_teacher(load_config(config, [*distil, "name=fill"]), **QUIET)
    times: dict[str, list[float]] = {"alone": [], "live": [], "cached": []}
    for repetition in range(repetitions):
        times["alone"].append(epoch_time(config, [*alone, f"name=alone{repetition}"]))
        times["live"].append(epoch_time(config, [*distil, f"name=live{repetition}", "train.teacher_store=false"]))
        times["cached"].append(epoch_time(config, [*distil, f"name=cached{repetition}"]))
    ratio = {arm: statistics.median(a / b for a, b in zip(times[arm], times["alone"])) for arm in ("live", "cached")}
    return {"epoch_s": times, "median_ratio_to_alone": ratio}


def augmented_kd(work: Path, repetitions: int) -> dict:
    write_cifar100(work / "cifar", train=640, test=64)
    common = [
        f"output_dir={work / 'kd'}", "data.name=cifar100", f"data.root={work / 'cifar'}", "data.augment=cifar",
        "data.batch_size=64", "data.val_size=0", "data.eval_batch_size=64", "student.name=resnet8x4",
        "train.epochs=1", "train.progress=false", "optim.lr=0.01",
    ]  # fmt: skip
    teacher = random_teacher(work, "resnet32x4", {}, 100, (3, 32, 32))
    distil = [*common, "method.name=kd", *teacher, "data.stream_seed=0"]
    return compare_epochs(None, [*common, "data.stream_seed=0"], distil, repetitions)


def function_matching(work: Path, repetitions: int, images: int) -> dict:
    config = str(ROOT / "configs/fashion_mnist/funmatch_cnn_cnn.yaml")
    common = [
        f"output_dir={work / 'funmatch'}", f"data.train_subset={images}", "data.val_size=256", "data.test_subset=256",
        "train.epochs=1", "train.progress=false", "data.stream_seed=0",
    ]  # fmt: skip
    alone = ["method={name: funmatch_views_alone, crop_area_min: 0.25}", "teacher=null", *common]
    distil = [*fmnist_teacher(work), *common]
    return compare_epochs(config, alone, distil, repetitions)


def trials(work: Path, count: int) -> dict:
    common = [
        "data.name=fashion_mnist", "data.augment=crop_flip", "data.train_subset=10000", "data.val_size=1000",
        "data.test_subset=1000", "data.batch_size=128", "student.name=mlp", "student.kwargs={hidden: [128]}",
        "train.epochs=2", "train.progress=false", "data.stream_seed=0",
    ]  # fmt: skip
    kd = [*common, *fmnist_teacher(work), "method.name=kd", "method.temperature=4.0"]
    arms = {
        "student alone": [*common, f"output_dir={work / 'alone'}"],
        "kd, uncached": [*kd, f"output_dir={work / 'uncached'}", "train.teacher_store=false"],
        "kd, cached": [*kd, f"output_dir={work / 'cached'}"],
    }
    result = {}
    for arm, overrides in arms.items():
        started = time.perf_counter()
        summaries = [
            fit(load_config(overrides=[*overrides, f"name=t{seed}", f"seed={seed}"]), **QUIET) for seed in range(count)
        ]
        result[arm] = {
            "total_s": time.perf_counter() - started,
            "teacher_live_samples": [s.get("teacher_live_samples") for s in summaries],
            "teacher_cache_hits": [s.get("teacher_cache_hits") for s in summaries],
            "test_acc": [s["final_test_acc"] for s in summaries],
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--funmatch-images", type=int, default=8192, help="training images of the funmatch epoch")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/teacher_cache_speed.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        result = {
            "machine": {
                "cpu": platform.processor() or platform.machine(),
                "cores": os.cpu_count(),
                "threads": args.threads,
                "torch": torch.__version__,
            },
            "augmented_kd_epoch": augmented_kd(work, args.repetitions),
            "funmatch_epoch": function_matching(work, args.repetitions, args.funmatch_images),
            "trials": trials(work, args.trials),
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("| epoch | student alone (s) | live teacher (s) | warm cache (s) | live / alone | cached / alone |")
    print("|---|---|---|---|---|---|")
    for name in ("augmented_kd_epoch", "funmatch_epoch"):
        row = result[name]
        times, ratio = row["epoch_s"], row["median_ratio_to_alone"]
        medians = [statistics.median(times[arm]) for arm in ("alone", "live", "cached")]
        cells = [f"{value:.2f}" for value in (*medians, ratio["live"], ratio["cached"])]
        print(f"| {name} | {' | '.join(cells)} |")
    print(f"\n| {args.trials} trials | total wall (s) | teacher samples run per trial |\n|---|---|---|")
    for arm, row in result["trials"].items():
        print(f"| {arm} | {row['total_s']:.1f} | {row['teacher_live_samples']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
