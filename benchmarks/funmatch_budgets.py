"""Function matching vs consistent teaching without mixup, at several epoch budgets (issue 4's measurement).

For every (mode, budget, seed) the Fashion-MNIST funmatch config is run with ``method.mode`` set to
``function_matching`` or ``consistent`` (same crop + flip for teacher and student, no mixup) and
``train.epochs`` set to the budget (each budget is its own run with its own cosine schedule). The final
test accuracy, top-1 agreement with the teacher and KL(teacher || student) are read from each run's
summary.json and written as a markdown table (mean ± std over seeds) and a plot to ``--out``.

    OMP_NUM_THREADS=1 python benchmarks/funmatch_budgets.py \\
        --teacher runs/fmnist_teacher_cnn --out runs/funmatch_budgets

Runs already finished under ``--out/runs`` are reused (their summary.json is read), so an interrupted grid
can be continued by running the same command again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from kdistill.report.tables import mean_std  # noqa: E402  (after the path set-up above)

MODES = {
    "function_matching": "function matching (crop + flip + mixup)",
    "consistent": "consistent, no mixup",
    "independent_noise": "independent noise (own crop + mixup each)",
    "fixed_teacher": "fixed teacher (teacher sees the plain image)",
}


def run_one(config_path: str, overrides: list[str]) -> dict:
    """One run in a worker process (one thread: the grid parallelises over processes)."""
    import torch

    torch.set_num_threads(1)
    from kdistill.config import load_config
    from kdistill.engine.loop import fit

    config = load_config(config_path, overrides)
    summary_path = Path(config.output_dir) / config.name / "summary.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    return fit(config, overwrite=True, log=lambda _: None)


def fmt(values: list[float], digits: int = 2) -> str:
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs/fashion_mnist/funmatch_cnn_cnn.yaml"))
    parser.add_argument(
        "--teacher", required=True, help="teacher run directory (e.g. from configs/fashion_mnist/ce_cnn.yaml)"
    )
    parser.add_argument("--out", required=True, help="output directory: runs/, results.json, table.md, plot.png")
    parser.add_argument("--budgets", type=int, nargs="+", default=[2, 5, 10], help="epoch budgets (default 2 5 10)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per point (default 3)")
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["function_matching", "consistent"],
        choices=list(MODES),
    )
    parser.add_argument("--train-subset", type=int, default=10_000, help="training images (default 10,000; 0 = all)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel runs (one thread each)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides"
    )
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = [
        f"output_dir={out / 'runs'}",
        f"teacher.checkpoint={args.teacher}",
        "train.progress=false",
        "data.val_size=1000",  # a small val split (a prefix of the teacher's held-out 5,000)
        *([f"data.train_subset={args.train_subset}"] if args.train_subset else []),
        *args.overrides,
    ]
    grid = []
    for budget in args.budgets:
        for mode in args.modes:
            for seed in range(args.seeds):
                name = f"fmnist_{mode}_e{budget}-seed{seed}"
                overrides = [
                    *common,
                    f"name={name}",
                    f"seed={seed}",
                    f"method.mode={mode}",
                    f"train.epochs={budget}",
                    f"train.eval_every={budget}",
                    f"train.checkpoint_every={budget}",
                ]
                grid.append({"mode": mode, "budget": budget, "seed": seed, "overrides": overrides})
    started = time.time()
    # longest runs first, so the parallel workers finish together
    order = sorted(range(len(grid)), key=lambda i: -grid[i]["budget"])
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {i: pool.submit(run_one, args.config, grid[i]["overrides"]) for i in order}
        for i in order:
            summary = futures[i].result()
            grid[i]["summary"] = {
                k: summary.get(k)
                for k in (
                    "final_test_acc",
                    "final_test_agreement",
                    "final_test_kl",
                    "teacher_test_acc",
                    "run_dir",
                    "wall_time_s",
                )
            }
            point = grid[i]
            print(
                f"{point['mode']:>18} {point['budget']:>3} ep seed {point['seed']}: "
                f"acc {summary['final_test_acc']:.2f} agreement {summary['final_test_agreement']:.2f} "
                f"({summary['wall_time_s']:.0f}s)",
                flush=True,
            )
    elapsed = time.time() - started

    teacher_acc = grid[0]["summary"]["teacher_test_acc"]
    rows = []
    for budget in args.budgets:
        for mode in args.modes:
            points = [p["summary"] for p in grid if p["mode"] == mode and p["budget"] == budget]
            acc = [p["final_test_acc"] for p in points]
            rows.append(
                {
                    "budget": budget,
                    "mode": mode,
                    "acc": acc,
                    "agreement": [p["final_test_agreement"] for p in points],
                    "kl": [p["final_test_kl"] for p in points],
                    "gap": [teacher_acc - a for a in acc],
                }
            )
    lines = [
        f"Fashion-MNIST, teacher {args.teacher} (test accuracy {teacher_acc:.2f}%), config {Path(args.config).name}, "
        f"{args.train_subset or 'all'} training images, {args.seeds} seeds (mean ± std), "
        f"final-epoch test metrics; {elapsed / 60:.1f} min wall time with {args.jobs} parallel runs.",
        "",
        "| epochs | mode | test acc (%) | agreement with teacher (%) | KL(teacher ‖ student) "
        "| gap to teacher (points) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['budget']} | {MODES.get(row['mode'], row['mode'])} | {fmt(row['acc'])} | "
            f"{fmt(row['agreement'])} | {fmt(row['kl'], 4)} | {fmt(row['gap'])} |"
        )
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(
        json.dumps(
            {
                "teacher_test_acc": teacher_acc,
                "args": vars(args),
                "grid": [{k: v for k, v in p.items() if k != "overrides"} for p in grid],
            },
            indent=1,
        )
    )
    print(table)
    plot(rows, args, teacher_acc, out / "plot.png")
    print(f"wrote {out / 'table.md'}, {out / 'plot.png'}, {out / 'results.json'}")
    return 0


def plot(rows: list[dict], args: argparse.Namespace, teacher_acc: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for mode in args.modes:
        mode_rows = [r for r in rows if r["mode"] == mode]
        budgets = [r["budget"] for r in mode_rows]
        for axis, key in zip(axes, ("agreement", "acc")):
            means = [mean_std(r[key])[0] for r in mode_rows]
            stds = [mean_std(r[key])[1] for r in mode_rows]
            axis.errorbar(budgets, means, yerr=stds, marker="o", capsize=3, label=MODES.get(mode, mode))
    axes[1].axhline(teacher_acc, color="gray", linestyle="--", label=f"teacher ({teacher_acc:.1f}%)")
    axes[0].set_title("top-1 agreement with the teacher (test)")
    axes[1].set_title("student test accuracy")
    for axis in axes:
        axis.set_xlabel("epochs (each budget its own cosine schedule)")
        axis.set_xscale("log")
        axis.set_xticks(args.budgets, [str(b) for b in args.budgets])
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # only the budgets are labelled
        axis.set_ylabel("%")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(f"Function matching and its ablations, Fashion-MNIST ({args.seeds} seeds, mean ± std)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
