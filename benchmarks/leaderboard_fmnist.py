"""The equal-tuning leaderboard: every method gets the same Optuna TPE budget on one Fashion-MNIST pair.

Published comparisons tune the proposed method and run the baselines at their defaults. Here the student alone, KD and
the other methods (logit, feature and relation kinds; DML online, BYOT self-distillation) each get ``--points``
TPE points over their own loss weight(s), their temperature where they have one, and the learning rate, ranked on
validation accuracy by ``kdistill sweep --search`` (every point trained in full: early validation accuracy at a high
learning rate is too noisy for median pruning to tell points apart at this budget); the chosen point is written to
``configs/fashion_mnist/leaderboard/<method>.yaml`` and rerun with ``--seeds`` seeds.
At the default 10 points TPE is still in its random start-up (Optuna's ``n_startup_trials``): each method gets a
seeded random search, and methods whose searched keys have one layout draw the same points (docs/results.md, section 8).
The table ranks by test accuracy with each method's difference to the student alone and to KD (± its standard
error), the wall time per run and the search's cost. Every command it runs is printed (and each chosen config's
header holds its sweep command): they are the documentation.

    python benchmarks/leaderboard_fmnist.py --out runs/leaderboard --table docs/results/leaderboard_fmnist.md

Run it again to continue: finished sweep points and finished final runs are not repeated. Each finished method's
record (chosen point, search cost, every seed's test accuracy and wall time, the CPU they ran on) is kept next to the
table (``leaderboard_fmnist.json``), so the table survives a lost ``runs/`` directory and a continuation on another
machine: a recorded method is not run again (``--fresh`` ignores the records), and one recorded without seeds (its
sweep's runs were lost) reruns only its chosen config's seeds. The teacher is ``runs/fmnist_teacher_cnn``
(``kdistill train --config configs/fashion_mnist/ce_cnn.yaml``), trained first if missing.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml

from kdistill.report.tables import format_mean_std, markdown_table, mean_difference, mean_std

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs/fashion_mnist/leaderboard.yaml"
CHOSEN = ROOT / "configs/fashion_mnist/leaderboard"
TEACHER = "runs/fmnist_teacher_cnn"
LR = "optim.lr=loguniform:0.005:0.2"
TEMPERATURE = "method.temperature=choice:1,2,4,8"
CONTINUED = " \\"  # a shell line continuation in a config's header


def _feature(weight: float) -> list[str]:
    """A feature or relation method: CE + kd_weight * KD + weight * its loss (weight within 100x of its default)."""
    return [f"method.weight=loguniform:{weight / 10:g}:{weight * 10:g}", "method.kd_weight=uniform:0:1", TEMPERATURE]


# method -> (kind, searched --param specs besides the lr, fixed --set overrides)
METHODS: dict[str, tuple[str, list[str], list[str]]] = {
    "ce": ("student alone", [], []),
    "kd": ("logit", [TEMPERATURE, "method.kd_weight=uniform:0.1:1", "method.ce_weight=uniform:0:1"], []),
    "dkd": ("logit", [TEMPERATURE, "method.alpha=loguniform:0.1:10", "method.beta=loguniform:0.5:16"],
            ["method.warmup_epochs=1"]),  # the reference warms up 20 of 240 epochs; here about 1 of 12
    "dist": ("logit", [TEMPERATURE, "method.dist_weight=loguniform:0.2:8"], []),
    "fitnet": ("feature", _feature(100.0), []),
    "at": ("feature", _feature(1000.0), []),
    "nst": ("feature", _feature(50.0), []),
    "vid": ("feature", _feature(1.0), []),
    "crd": ("feature", _feature(0.8), ["method.num_negatives=1024"]),  # 16,384 negatives: 0.5 GB a step on a CPU
    "sp": ("relation", _feature(3000.0), []),
    "rkd": ("relation", _feature(1.0), []),
    "pkt": ("relation", _feature(30000.0), []),
    "cc": ("relation", _feature(0.02), []),
    "dml": ("online (2 peers, no teacher)", ["method.temperature=choice:1,2,4,8", "method.kl_weight=loguniform:0.1:10"],
            []),
    "byot": ("self (no teacher)", ["method.temperature=choice:1,2,4,8", "method.alpha=uniform:0:0.9",
                                  "method.feature_weight=loguniform:1e-6:1e-2"], []),
}  # fmt: skip
NO_TEACHER = {"ce", "dml", "byot"}


def run(command: list[str]) -> None:
    """Print a ``kdistill ...`` command as a user types it, then run it with this Python's kdistill."""
    print("$ " + shlex.join(command), flush=True)
    executable = shutil.which("kdistill") or str(Path(sys.executable).parent / "kdistill")
    subprocess.run([executable, *command[1:]], check=True, cwd=ROOT)


def sweep_command(method: str, out: Path, points: int, workers: int) -> list[str]:
    _, params, fixed = METHODS[method]
    command = ["kdistill", "sweep", str(BASE.relative_to(ROOT)), "--search", "--n-trials", str(points)]
    command += ["--workers", str(workers), "--out", str(out / "sweeps" / method), "--set", f"method.name={method}"]
    if method not in NO_TEACHER:
        command += ["--set", f"teacher.checkpoint={TEACHER}"]
    for setting in fixed:
        command += ["--set", setting]
    for param in [*params, LR]:
        command += ["--param", param]
    return command


def chosen_point(sweep_dir: Path) -> dict[str, Any]:
    """The sweep's best point by validation accuracy (points.csv is ranked best first), its values parsed."""
    with (sweep_dir / "points.csv").open() as handle:
        reader = csv.DictReader(handle)
        best = next(row for row in reader if row["objective"])
        fields = list(reader.fieldnames or [])
    keys = fields[fields.index("point") + 1 : fields.index("objective")]  # the swept config keys
    return {"values": {key: yaml.safe_load(best[key]) for key in keys}, "val_acc": float(best["objective"])}


def write_chosen(
    method: str, command: list[str], point: dict[str, Any], summaries: list[dict[str, Any]] | None = None
) -> Path:
    """configs/fashion_mnist/leaderboard/<method>.yaml: the base config with the chosen point (and, once the seeds
    ran, their test accuracy in the header)."""
    config = yaml.safe_load(BASE.read_text())
    config["name"] = f"leaderboard_{method}"
    config["method"] = {"name": method}
    if method not in NO_TEACHER:
        config["teacher"] = {"checkpoint": TEACHER}
    for setting in METHODS[method][2]:
        key, value = setting.split("=", 1)
        config["method"][key.split(".", 1)[1]] = yaml.safe_load(value)
    for key, value in point["values"].items():
        section, name = key.split(".", 1)
        config.setdefault(section, {})[name] = round(value, 6) if isinstance(value, float) else value
    wrapped = textwrap.wrap(shlex.join(command), 112, break_long_words=False, break_on_hyphens=False)
    measured = (
        f"# Measured: {format_mean_std([s['final_test_acc'] for s in summaries])}% test, {len(summaries)} seeds.\n"
        if summaries
        else ""
    )
    header = (
        f"# kdistill {'train' if method in NO_TEACHER else 'distill'} --config "
        f"configs/fashion_mnist/leaderboard/{method}.yaml --trials 3\n"
        f"# The equal-tuning leaderboard's {method} (docs/results.md, section 8): the point of\n"
        + "".join(f"#   {line}{CONTINUED if i < len(wrapped) - 1 else ''}\n" for i, line in enumerate(wrapped))
        + f"# with the best mean validation accuracy ({point['val_acc']:.2f}%), chosen by "
        "benchmarks/leaderboard_fmnist.py.\n" + measured
    )
    path = CHOSEN / f"{method}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=120))
    return path


def seed_summaries(directory: Path, name: str, seeds: int, command: list[str]) -> list[dict[str, Any]]:
    """The summaries of ``<directory>/<name>-seed<N>`` for N < ``seeds``, running ``command`` (a ``--trials`` command
    with ``--resume``, which continues a killed seed) first when any of them is missing."""
    done = [directory / f"{name}-seed{seed}" / "summary.json" for seed in range(seeds)]
    if not all(path.is_file() for path in done):
        run(command)
    return [json.loads(path.read_text()) for path in done]


def final_runs(method: str, config: Path, out: Path, seeds: int) -> list[dict[str, Any]]:
    directory = out / "final"
    verb = "train" if method in NO_TEACHER else "distill"
    command = ["kdistill", verb, "--config", str(config.relative_to(ROOT)), "--trials", str(seeds), "--resume",
               "--set", f"output_dir={directory}", "--set", "train.progress=false"]  # fmt: skip
    return seed_summaries(directory, f"leaderboard_{method}", seeds, command)


def search_seconds(sweep_dir: Path) -> float:
    return sum(json.loads(path.read_text())["wall_time_s"] for path in sweep_dir.glob("runs/*/summary.json"))


def shown(a: list[float], b: list[float]) -> str:
    delta, error = mean_difference(a, b)
    noise = " (noise)" if abs(delta) < 2 * error else ""
    return f"{delta:+.2f} ± {error:.2f}{noise}"


def table(results: dict[str, dict[str, Any]]) -> str:
    accuracy = {method: [s["final_test_acc"] for s in r["seeds"]] for method, r in results.items()}
    ranked = sorted(results, key=lambda method: -mean_std(accuracy[method])[0])
    rows = []
    for rank, method in enumerate(ranked, 1):
        result = results[method]
        settings = ", ".join(
            f"{key.split('.', 1)[1]} {value:.3g}" if isinstance(value, float) else f"{key.split('.', 1)[1]} {value}"
            for key, value in result["point"]["values"].items()
        )
        wall = mean_std([s["wall_time_s"] for s in result["seeds"]])[0]
        rows.append([
            rank, method, METHODS[method][0], format_mean_std(accuracy[method]),
            "-" if method == "ce" else shown(accuracy["ce"], accuracy[method]),
            "-" if method == "kd" else shown(accuracy["kd"], accuracy[method]),
            f"{result['point']['val_acc']:.2f}", f"{wall:.0f}", f"{result['search_s'] / 60:.1f}", settings,
        ])  # fmt: skip
    headers = ["rank", "method", "kind", "test acc % (3 seeds)", "vs alone (pp)", "vs KD (pp)", "chosen val acc %",
               "s / run", "search (min)", "chosen settings"]  # fmt: skip
    return markdown_table(headers, rows)


def cpu_name() -> str:
    """The CPU model (timings in the table are only comparable on one)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_records(path: Path) -> dict[str, dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else {}


def finished(records: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The records whose chosen point's seeds ran (the ones the table shows)."""
    return {name: record for name, record in records.items() if record.get("seeds")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/leaderboard")
    parser.add_argument("--table", default="docs/results/leaderboard_fmnist.md")
    parser.add_argument("--points", type=int, default=10, help="TPE points per method (the same for every method)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the chosen point's rerun")
    parser.add_argument("--workers", type=int, default=2, help="sweep worker processes")
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--fresh", action="store_true", help="ignore the recorded methods and run every one again")
    args = parser.parse_args()
    out, table_path = Path(args.out), Path(args.table)
    records_path = table_path.with_suffix(".json")
    records = {} if args.fresh else load_records(records_path)
    if not (ROOT / TEACHER / "summary.json").is_file():
        run(["kdistill", "train", "--config", "configs/fashion_mnist/ce_cnn.yaml"])
    for method in args.methods:
        record = records.get(method)
        if record is not None and record.get("seeds"):
            print(f"{method}: recorded in {records_path}, not run again (--fresh runs it)", flush=True)
            continue
        command = sweep_command(method, out, args.points, args.workers)
        if record is None:  # sweep, then the chosen point's seeds
            run(command)
            sweep_dir = out / "sweeps" / method
            record = {"point": chosen_point(sweep_dir), "search_s": search_seconds(sweep_dir), "search_cpu": cpu_name()}
        config = write_chosen(method, command, record["point"])
        summaries = final_runs(method, config, out, args.seeds)
        write_chosen(method, command, record["point"], summaries)
        record["seeds"] = [{key: s[key] for key in ("final_test_acc", "wall_time_s")} for s in summaries]
        record["cpu"] = cpu_name()
        records[method] = record
        print(f"{method}: test {format_mean_std([s['final_test_acc'] for s in summaries])}", flush=True)
        table_path.parent.mkdir(parents=True, exist_ok=True)
        records_path.write_text(json.dumps(records, indent=1) + "\n")
        if {"ce", "kd"} <= set(finished(records)):  # the table so far, after every method (its columns need both)
            table_path.write_text(table(finished(records)) + "\n")
    print(table(finished(records)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
