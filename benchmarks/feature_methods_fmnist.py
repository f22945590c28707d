"""Every distillation method of issue 5 against the baseline student and the teacher on Fashion-MNIST.

A CNN teacher with feature maps (32/64 filters, padding 1, BN, global-average-pool head: maps 32x14x14,
64x7x7) and a smaller CNN student (8/16 filters, no padding: maps 8x13x13, 16x5x5), so channels and
spatial sizes differ. Each method runs with its CIFAR-100 defaults (configs/fashion_mnist/
feature_methods_cnn_cnn.yaml) for a short fixed budget on a training subset, with several seeds; the
table gives last-epoch test accuracy (mean ± std over seeds), the gain over the baseline student, the
test accuracy at the best validation epoch, and the deployed parameter count / pruning ratio.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/feature_methods_fmnist.py \
        --output benchmarks/results/feature_methods_fmnist [--teacher-run DIR] [--epochs 3] [--seeds 3]

The teacher is trained first (``ce``, full training set, ``--teacher-epochs``) unless ``--teacher-run``
names an existing run directory. Runs that diverge (NaN loss) are reported as such.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from kdistill.config import load_config
from kdistill.contracts import TrainingDivergedError
from kdistill.engine.loop import fit
from kdistill.report.tables import format_mean_std, markdown_table, mean_std

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/fashion_mnist/feature_methods_cnn_cnn.yaml"
TEACHER_KWARGS = "{channels: [32, 64], padding: 1, batch_norm: true, head: avg}"
METHODS = ["kd", "fitnet", "at", "sp", "vid", "crd", "srrl", "semckd", "dkd", "simkd"]
# Settings changed from the CIFAR-100 defaults for this CPU budget, reported in the table.
BUDGET_OVERRIDES = {"crd": ["method.num_negatives=1024"]}  # 16384 negatives gather 0.5 GB per step on CPU


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="benchmarks/results/feature_methods_fmnist")
    parser.add_argument("--runs", default=None, help="where run directories go (default: <output>/runs)")
    parser.add_argument(
        "--teacher-run", default=None, help="an existing teacher run directory (skips teacher training)"
    )
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-subset", type=int, default=10000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", nargs="*", default=METHODS)
    parser.add_argument("--extra", nargs="*", default=[], help="extra rows as LABEL:method.name=...,method.key=value")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    runs = Path(args.runs) if args.runs else output / "runs"
    common = [f"output_dir={runs}", "train.progress=false", f"train.device={args.device}"]
    if args.data_root:
        common.append(f"data.root={args.data_root}")
    log = lambda text: print(text, flush=True)  # noqa: E731

    teacher_run = args.teacher_run
    if teacher_run is None:
        teacher_config = load_config(
            ROOT / "configs/fashion_mnist/ce_cnn.yaml",
            [
                *common,
                "name=fmnist_teacher_cnn_avg",
                f"student.kwargs={TEACHER_KWARGS}",
                f"train.epochs={args.teacher_epochs}",
            ],
        )
        teacher_dir = runs / teacher_config.name
        if not (teacher_dir / "summary.json").exists():
            log(f"--- teacher ({args.teacher_epochs} epochs, full training set)")
            fit(teacher_config, overwrite=True, log=log)
        teacher_run = str(teacher_dir)
    teacher_summary = json.loads((Path(teacher_run) / "summary.json").read_text())

    base = [
        *common,
        f"teacher.checkpoint={teacher_run}",
        f"train.epochs={args.epochs}",
        f"data.train_subset={args.train_subset}",
    ]
    rows_spec: list[tuple[str, list[str]]] = [("student (ce)", ["method.name=ce", "teacher=null"])]
    rows_spec += [(name, [f"method.name={name}", *BUDGET_OVERRIDES.get(name, [])]) for name in args.methods]
    for extra in args.extra:
        label, settings = extra.split(":", 1)
        rows_spec.append((label, settings.split(",")))

    results: dict[str, dict] = {}
    for label, overrides in rows_spec:
        slug = label.replace(" ", "_").replace("(", "").replace(")", "").replace("=", "")
        accs, best_accs, times, diverged = [], [], [], 0
        report = None
        for seed in range(args.seeds):
            config = load_config(CONFIG, [*base, *overrides, f"seed={seed}", f"name=fm_{slug}-seed{seed}"])
            finished = Path(config.output_dir) / config.name / "summary.json"
            started = time.time()
            if finished.is_file():  # an earlier, interrupted invocation finished this run: reuse it
                summary = json.loads(finished.read_text())
            else:
                try:
                    summary = fit(config, overwrite=True, log=lambda text: None)
                except TrainingDivergedError as error:
                    log(f"{label} seed {seed}: diverged ({str(error)[:100]})")
                    diverged += 1
                    continue
            times.append(summary["wall_time_s"])
            accs.append(summary["final_test_acc"])
            best_accs.append(summary["test_acc_at_best_val"])
            report = report or {key: summary[key] for key in ("params_deployed", "pruning_ratio")}  # from summary.json
            log(f"{label} seed {seed}: test {summary['final_test_acc']:.2f} ({time.time() - started:.0f}s)")
        results[label] = {
            "overrides": overrides,
            "final_test_acc": accs,
            "test_acc_at_best_val": best_accs,
            "seconds": times,
            "diverged": diverged,
            "parameters": report,
        }

    baseline_mean = mean_std(results["student (ce)"]["final_test_acc"])[0]
    headers = [
        "method",
        "settings changed",
        "test acc (last epoch)",
        "Δ vs student",
        "test acc @ best val",
        "beats student?",
        "deployed params",
        "pruning ratio",
        "s / run",
    ]
    rows = []
    for label, result in results.items():
        accs = result["final_test_acc"]
        mean, std = mean_std(accs) if accs else (float("nan"), float("nan"))
        beats = (
            "-"
            if label.startswith("student") or not accs
            else ("yes" if mean - std > baseline_mean else ("no" if mean <= baseline_mean else "within 1 std"))
        )
        params = result["parameters"] or {}
        changed = ", ".join(o for o in result["overrides"] if not o.startswith(("method.name=", "teacher=")))
        rows.append(
            [
                label,
                changed or "-",
                (format_mean_std(accs) if accs else "-")
                + (f" ({result['diverged']} diverged)" if result["diverged"] else ""),
                f"{mean - baseline_mean:+.2f}" if accs and not label.startswith("student") else "-",
                format_mean_std([a for a in result["test_acc_at_best_val"] if a is not None]) if accs else "-",
                beats,
                f"{params.get('params_deployed', '-'):,}" if params else "-",
                f"{params['pruning_ratio']:.3f}" if params.get("pruning_ratio") is not None else "-",
                f"{sum(result['seconds']) / max(len(result['seconds']), 1):.0f}",
            ]
        )
    rows.append(
        [
            "teacher",
            f"ce, {teacher_summary['epochs']} epochs, full train set",
            f"{teacher_summary['final_test_acc']:.2f}",
            "-",
            "-",
            "-",
            f"{teacher_summary['student_parameters']:,}",
            "0",
            "-",
        ]
    )
    header = (
        f"# Feature-distillation methods on Fashion-MNIST\n\n"
        f"Teacher cnn {TEACHER_KWARGS}; student cnn {{channels: [8, 16], padding: 0, batch_norm: true, head: avg}}; "
        f"{args.epochs} epochs on a {args.train_subset}-image training subset, batch 64, SGD 0.05 Nesterov, cosine; "
        f"{args.seeds} seeds (mean ± sample std); test = the 10,000 Fashion-MNIST test images. Each method uses its "
        "CIFAR-100 defaults except the settings listed. "
        "'beats student?': yes = mean - std above the student's mean.\n\n"
        f"Command: `{' '.join(['python', *sys.argv])}`\n\n"
    )
    (output / "results.md").write_text(header + markdown_table(headers, rows) + "\n")
    (output / "results.json").write_text(json.dumps({"teacher": teacher_summary, "results": results}, indent=1))
    print(header + markdown_table(headers, rows))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
