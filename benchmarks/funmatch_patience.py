"""The patience curve: student test accuracy and agreement with the teacher against the epoch budget (log axis),
one line per mode, from the table.md files that benchmarks/funmatch_budgets.py writes (several runs of it, e.g.
short and long budgets measured apart, combine into one curve; a budget measured twice keeps the later file's row).

    python benchmarks/funmatch_patience.py docs/results/funmatch_fmnist_250.md runs/ablations/table.md \
        --teacher 90.7 --out docs/results/funmatch_patience.png
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

CELL = re.compile(r"^\s*([-\d.]+)\s*±\s*([\d.]+)\s*$")


def read_tables(paths: list[Path]) -> dict[str, dict[int, tuple[tuple[float, float], tuple[float, float]]]]:
    """mode -> budget -> ((acc mean, std), (agreement mean, std)) from funmatch_budgets.py's markdown tables."""
    curves: dict[str, dict[int, tuple[tuple[float, float], tuple[float, float]]]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if len(cells) < 4 or not cells[0].isdigit():
                continue
            acc, agreement = CELL.match(cells[2]), CELL.match(cells[3])
            if acc is None or agreement is None:
                raise SystemExit(f"{path}: cannot read the row {line!r} (expected 'mean ± std' cells)")
            curves.setdefault(cells[1], {})[int(cells[0])] = (
                (float(acc[1]), float(acc[2])),
                (float(agreement[1]), float(agreement[2])),
            )
    if not curves:
        raise SystemExit("no rows found: pass the table.md files written by benchmarks/funmatch_budgets.py")
    return curves


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tables", nargs="+", type=Path, help="table.md files of funmatch_budgets.py")
    parser.add_argument("--teacher", type=float, required=True, help="the teacher's test accuracy (%%)")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--title", default="Patience: function matching and its ablations on Fashion-MNIST")
    args = parser.parse_args()
    curves = read_tables(args.tables)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    budgets: set[int] = set()
    for mode, points in curves.items():
        xs = sorted(points)
        budgets.update(xs)
        for axis, which in zip(axes, (1, 0)):  # agreement left, accuracy right
            axis.errorbar(
                xs, [points[x][which][0] for x in xs], yerr=[points[x][which][1] for x in xs],
                marker="o", capsize=3, label=mode,
            )  # fmt: skip
    axes[1].axhline(args.teacher, color="gray", linestyle="--", label=f"teacher ({args.teacher:.1f}%)")
    axes[1].axhline(args.teacher - 1, color="gray", linestyle=":", label="1 point below the teacher")
    axes[0].set_title("top-1 agreement with the teacher (test)")
    axes[1].set_title("student test accuracy")
    for axis in axes:
        axis.set_xscale("log")
        axis.set_xticks(sorted(budgets), [str(b) for b in sorted(budgets)])
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel("epochs (each budget its own cosine schedule)")
        axis.set_ylabel("%")
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    figure.suptitle(args.title)
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
