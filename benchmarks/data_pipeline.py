"""The data pipeline against its limit and against hand-written PyTorch (issue 27).

1. *Augmented MLP epoch*: Fashion-MNIST, 20,000 training images, ``crop_flip``, the demo's MLP, batch 128. Arms,
   interleaved per repetition: kdistill's epoch with the batched pipeline (``data.pipeline=auto``) and with
   torchvision's per-sample transforms (``data.pipeline=per_sample``), each its second epoch's ``train_time_s`` (the
   training loop with its data loading); the batched limit (:func:`handwritten_fmnist.batched_epoch`: crop and flip
   of each batch as one gather, no loader, no bookkeeping); a hand-written per-sample ``DataLoader`` loop.
2. *CIFAR-format resnet8x4 epoch*: CIFAR-100 python-format files of random images written here, ``augment=cifar``,
   batch 64, the student alone, batched vs per-sample pipeline (second epoch of each run).
3. *Whole process*: ``kdistill train`` (the same MLP run, 2 epochs, test set evaluated after each) against
   ``benchmarks/handwritten_fmnist.py`` (the same with torchvision per-sample transforms), both as fresh processes,
   interleaved pairs; wall time from start to exit.

Ratios are medians of paired ratios. Writes ``benchmarks/results/data_pipeline.json`` and prints Markdown tables.

    .venv/bin/python benchmarks/data_pipeline.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import handwritten_fmnist as hand  # noqa: E402  (after the path set-up above)
from kdistill.api import fit  # noqa: E402
from kdistill.config import load_config  # noqa: E402
from kdistill.engine.run_dir import read_metrics  # noqa: E402
from teacher_cache_speed import write_cifar100  # noqa: E402

QUIET = {"log": lambda _: None}
SECTIONS = ("mlp_epoch", "cifar_resnet8x4_epoch", "whole_process")
MLP_RUN = [
    "data.name=fashion_mnist", "data.augment=crop_flip", "data.train_subset=20000", "data.val_size=0",
    "data.batch_size=128", "student.name=mlp", "student.kwargs={hidden: [128]}", "optim.name=sgd", "optim.lr=0.05",
    "optim.momentum=0.9", "optim.nesterov=true", "optim.weight_decay=5e-4", "schedule.name=cosine",
    "train.progress=false",
]  # fmt: skip


def kdistill_epoch(overrides: list[str]) -> float:
    """The second epoch's ``train_time_s`` of a two-epoch kdistill run (the first warms the allocator and caches)."""
    summary = fit(load_config(overrides=[*overrides, "train.epochs=2"]), overwrite=True, **QUIET)
    return read_metrics(Path(summary["run_dir"]))[1]["train_time_s"]


def timed(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def mlp_epoch(work: Path, repetitions: int) -> dict:
    images, labels = hand.load("train", 20000)
    loader = hand.per_sample_loader(images, labels)
    times: dict[str, list[float]] = {"kdistill": [], "kdistill_per_sample": [], "limit": [], "handwritten": []}
    for repetition in range(repetitions):
        common = [*MLP_RUN, f"output_dir={work / 'mlp'}", f"seed={repetition}"]
        times["kdistill"].append(kdistill_epoch([*common, f"name=batched{repetition}"]))
        torch.manual_seed(repetition)
        model = hand.mlp()
        sgd, schedule = hand.optimiser(model, 2 * len(loader))
        hand.batched_epoch(model, sgd, schedule, images, labels)  # warm-up epoch, as kdistill's first
        times["limit"].append(timed(hand.batched_epoch, model, sgd, schedule, images, labels))
        times["kdistill_per_sample"].append(
            kdistill_epoch([*common, f"name=per_sample{repetition}", "data.pipeline=per_sample"])
        )
        times["handwritten"].append(timed(hand.per_sample_epoch, model, sgd, schedule, loader))
        print(f"  mlp epoch {repetition + 1}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()))
    return summarise(times, "limit")


def cifar_epoch(work: Path, repetitions: int, images: int) -> dict:
    write_cifar100(work / "cifar", train=images, test=64)
    common = [
        f"output_dir={work / 'cifar-runs'}", "data.name=cifar100", f"data.root={work / 'cifar'}", "data.augment=cifar",
        "data.batch_size=64", "data.val_size=0", "data.eval_batch_size=64", "student.name=resnet8x4",
        "optim.lr=0.01", "train.progress=false",
    ]  # fmt: skip
    times: dict[str, list[float]] = {"batched": [], "per_sample": []}
    for repetition in range(repetitions):
        times["batched"].append(kdistill_epoch([*common, f"name=b{repetition}"]))
        times["per_sample"].append(kdistill_epoch([*common, f"name=p{repetition}", "data.pipeline=per_sample"]))
        print(f"  cifar epoch {repetition + 1}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()))
    return summarise(times, "per_sample")


def wall(command: list[str], environment: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def whole_process(work: Path, pairs: int) -> dict:
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    overrides = [arg for item in MLP_RUN for arg in ("--set", item)]
    kdistill = [
        sys.executable, "-m", "kdistill.cli", "train", *overrides, "--set", "train.epochs=2",
        "--set", f"output_dir={work / 'process'}", "--set", "name=process", "--overwrite",
    ]  # fmt: skip
    script = [sys.executable, str(ROOT / "benchmarks/handwritten_fmnist.py"), "--epochs", "2"]
    times: dict[str, list[float]] = {"kdistill_train": [], "handwritten_script": []}
    for pair in range(pairs):
        arms = [("kdistill_train", kdistill), ("handwritten_script", script)]
        for name, command in arms if pair % 2 == 0 else arms[::-1]:  # A B, B A, ...
            times[name].append(wall(command, environment))
        print(f"  whole process {pair + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
    return summarise(times, "handwritten_script")


def summarise(times: dict[str, list[float]], reference: str) -> dict:
    """Every arm's times, medians and median paired ratio to ``reference``."""
    return {
        "seconds": times,
        "median_s": {arm: statistics.median(values) for arm, values in times.items()},
        "median_ratio_to": reference,
        "median_ratio": {
            arm: statistics.median(a / b for a, b in zip(values, times[reference])) for arm, values in times.items()
        },
    }


def table(title: str, result: dict) -> str:
    lines = [f"| {title} | median (s) | median paired ratio to {result['median_ratio_to']} |", "|---|---|---|"]
    for arm, seconds in result["median_s"].items():
        lines.append(f"| {arm} | {seconds:.3f} | {result['median_ratio'][arm]:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=5, help="interleaved whole-process pairs")
    parser.add_argument("--cifar-images", type=int, default=1280)
    parser.add_argument("--cifar-repetitions", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/data_pipeline.json"))
    parser.add_argument(
        "--only", nargs="+", choices=SECTIONS, help="run these sections and update them in an existing --out file"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the whole-process arms' processes
    out = Path(args.out)
    result = json.loads(out.read_text()) if args.only and out.exists() else {}
    result["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
    }
    runs = {
        "mlp_epoch": lambda work: mlp_epoch(work, args.repetitions),
        "cifar_resnet8x4_epoch": lambda work: cifar_epoch(work, args.cifar_repetitions, args.cifar_images),
        "whole_process": lambda work: whole_process(work, args.pairs),
    }
    with tempfile.TemporaryDirectory() as folder:
        for section in args.only or SECTIONS:
            result[section] = runs[section](Path(folder))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    titles = {
        "mlp_epoch": "augmented MLP epoch (20,000 images)",
        "cifar_resnet8x4_epoch": f"resnet8x4 epoch ({args.cifar_images} CIFAR-format images)",
        "whole_process": "whole process, 2 epochs",
    }
    print("\n\n".join(table(titles[section], result[section]) for section in SECTIONS if section in result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
