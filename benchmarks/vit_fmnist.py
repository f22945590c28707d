"""ViT students on Fashion-MNIST: alone, with KD, with DeiT hard and soft, and DeiT from a transformer teacher.

Each arm's settings (the learning rate, and the temperature where the arm has one) are chosen on validation by a
``kdistill sweep`` grid, then the chosen point is rerun with ``--seeds`` seeds and reported on test. The arms answer
the DeiT paper's two findings at this scale (Touvron et al., arXiv:2012.12877, section 5.2): does hard-label
distillation beat soft, and is a convnet the better teacher (the CNN of ``configs/fashion_mnist/ce_cnn.yaml`` against
the ViT of ``configs/fashion_mnist/ce_vit_teacher.yaml``, both trained first if missing)?

    python benchmarks/vit_fmnist.py --out runs/vit --table docs/results/vit_fmnist.md

Every command it runs is printed; run it again to continue (finished sweep points and final runs are not repeated).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kdistill.report.tables import format_mean_std, markdown_table, mean_std
from leaderboard_fmnist import ROOT, chosen_point, run, search_seconds, seed_summaries, shown

LR = "optim.lr=5.0e-4,1.0e-3,2.0e-3"
CNN_TEACHER, VIT_TEACHER = "runs/fmnist_teacher_cnn", "runs/fmnist_teacher_vit"
TEACHERS = {CNN_TEACHER: "configs/fashion_mnist/ce_cnn.yaml", VIT_TEACHER: "configs/fashion_mnist/ce_vit_teacher.yaml"}

# arm -> (label, config, fixed --set overrides, swept --param grids)
ARMS: dict[str, tuple[str, str, list[str], list[str]]] = {
    "alone": ("ViT alone (labels)", "ce_vit.yaml", [], [LR]),
    "kd": ("+ KD from the CNN (no token)", "kd_cnn_vit.yaml", [], [LR, "method.temperature=1,4"]),
    "deit_hard": ("+ DeiT hard, CNN teacher", "deit_cnn_vit.yaml", [], [LR]),
    "deit_soft": ("+ DeiT soft, CNN teacher", "deit_cnn_vit.yaml", ["method.distillation_type=soft"],
                  [LR, "method.temperature,method.distillation_weight=[3,0.1],[1,0.5]"]),  # the paper's; the code's
    "deit_hard_vit": ("+ DeiT hard, ViT teacher", "deit_cnn_vit.yaml", [f"teacher.checkpoint={VIT_TEACHER}"], [LR]),
}  # fmt: skip


def arm_command(arm: str, out: Path, workers: int) -> list[str]:
    _, config, fixed, params = ARMS[arm]
    command = ["kdistill", "sweep", f"configs/fashion_mnist/{config}", "--workers", str(workers)]
    command += ["--out", str(out / "sweeps" / arm), "--set", f"name=vit_{arm}"]
    for setting in fixed:
        command += ["--set", setting]
    for param in params:
        command += ["--param", param]
    return command


def final_command(arm: str, point: dict[str, Any], out: Path, seeds: int) -> list[str]:
    _, config, fixed, _ = ARMS[arm]
    verb = "train" if arm == "alone" else "distill"
    command = ["kdistill", verb, "--config", f"configs/fashion_mnist/{config}", "--trials", str(seeds), "--resume"]
    settings = [*fixed, *(f"{key}={value}" for key, value in point["values"].items())]
    for setting in [f"name=vit_{arm}", *settings, f"output_dir={out / 'final'}", "train.progress=false"]:
        command += ["--set", setting]
    return command


def teacher_row(directory: str) -> list[str]:
    summary = json.loads((ROOT / directory / "summary.json").read_text())
    kind = {CNN_TEACHER: "CNN", VIT_TEACHER: "ViT"}[directory]
    return [f"teacher {kind} ({directory})", f"{summary['params_deployed']:,}", "1",
            f"{summary['final_test_acc']:.2f}", "-", "-", "-", "-", "-", "-"]  # fmt: skip


def table(results: dict[str, dict[str, Any]]) -> str:
    accuracy = {arm: [s["final_test_acc"] for s in r["summaries"]] for arm, r in results.items()}
    rows = [teacher_row(CNN_TEACHER), teacher_row(VIT_TEACHER)]
    for arm, result in results.items():
        summaries = result["summaries"]
        agreement = [s["final_test_agreement"] for s in summaries if "final_test_agreement" in s]
        settings = ", ".join(f"{key.split('.', 1)[1]} {value:g}" for key, value in result["point"]["values"].items())
        rows.append([
            ARMS[arm][0], f"{summaries[0]['params_deployed']:,}", str(len(summaries)), format_mean_std(accuracy[arm]),
            format_mean_std(agreement) if agreement else "-",
            "-" if arm == "alone" else shown(accuracy["alone"], accuracy[arm]),
            f"{result['point']['val_acc']:.2f}", settings, f"{mean_std([s['wall_time_s'] for s in summaries])[0]:.0f}",
            f"{result['search_s'] / 60:.1f}",
        ])  # fmt: skip
    headers = ["model", "parameters", "seeds", "test acc %", "teacher agreement %", "vs alone (pp)",
               "chosen val acc %", "chosen settings", "s / run", "search (min)"]  # fmt: skip
    return markdown_table(headers, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/vit")
    parser.add_argument("--table", default="docs/results/vit_fmnist.md")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="sweep worker processes")
    parser.add_argument("--arms", nargs="*", default=list(ARMS))
    args = parser.parse_args()
    out = Path(args.out)
    for directory, config in TEACHERS.items():
        if not (ROOT / directory / "summary.json").is_file():
            run(["kdistill", "train", "--config", config])
    results: dict[str, dict[str, Any]] = {}
    for arm in ["alone", *(arm for arm in args.arms if arm != "alone")]:  # every row's difference needs the alone
        run(arm_command(arm, out, args.workers))
        point = chosen_point(out / "sweeps" / arm)
        summaries = seed_summaries(out / "final", f"vit_{arm}", args.seeds, final_command(arm, point, out, args.seeds))
        results[arm] = {"point": point, "summaries": summaries, "search_s": search_seconds(out / "sweeps" / arm)}
        print(f"{arm}: test {format_mean_std([s['final_test_acc'] for s in summaries])}", flush=True)
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(table(results) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
