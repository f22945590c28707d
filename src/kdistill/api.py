"""The Python API: everything the CLI does, as importable functions.

>>> from kdistill import api
>>> from kdistill.config import load_config
>>> summary = api.distill(load_config("configs/fashion_mnist/kd_cnn_mlp.yaml", ["train.epochs=2"]))
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdistill.config import Config, load_config, replace
from kdistill.contracts import ConfigError
from kdistill.data import build_data, data_info, make_loader
from kdistill.engine import loop
from kdistill.engine.builders import build_method, load_method_state, method_class, resolve_device
from kdistill.engine.evaluation import evaluate
from kdistill.engine.export import load_student, student_from_payload
from kdistill.engine.teacher_fill import cache_teacher
from kdistill.models.loading import STUDENT_KIND, read_checkpoint, resolve_checkpoint_path
from kdistill.report.batches import show_batch
from kdistill.report.experiments import runs_table, write_report
from kdistill.report.plots import plot_metric
from kdistill.report.tables import format_mean_std, markdown_table, mean_std
from kdistill.track import build_sinks

__all__ = [
    "cache_teacher",
    "fit",
    "train",
    "distill",
    "run_trials",
    "evaluate_checkpoint",
    "demo",
    "load_student",
    "runs_table",
    "write_report",
    "show_batch",
]


def fit(
    config: Config,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    stop_after_epochs: int | None = None,
) -> dict[str, Any]:
    """Train ``config`` (any method) with the trackers its ``track`` section enables; returns the summary.

    See :func:`kdistill.engine.loop.fit` for ``resume`` and ``stop_after_epochs``.
    """
    return loop.fit(config, resume, overwrite, log, stop_after_epochs, trackers=build_sinks)


def train(
    config: Config, resume: bool = False, overwrite: bool = False, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Train a teacher or a baseline student on labels (a method that needs no teacher, default ``ce``)."""
    if method_class(config).traits.needs_teacher:
        raise ConfigError(
            f"`train` fits a model on labels; method {config.method.name!r} needs a teacher: use `distill`"
        )
    return fit(config, resume=resume, overwrite=overwrite, log=log)


def distill(
    config: Config, resume: bool = False, overwrite: bool = False, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Train the student from the teacher(s) with ``config.method``."""
    if method_class(config).traits.kind == "labels":
        raise ConfigError(
            f"`distill` needs a distillation method, {config.method.name!r} learns from labels only: set method.name "
            "(e.g. kd); `train` fits on labels"
        )
    return fit(config, resume=resume, overwrite=overwrite, log=log)


def run_trials(
    config: Config,
    trials: int,
    overwrite: bool = False,
    resume: bool = False,
    log: Callable[[str], None] = print,
    runner: Callable[..., dict[str, Any]] = fit,
) -> list[dict[str, Any]]:
    """Run ``config`` with ``trials`` consecutive seeds from ``config.seed``; runs are named ``<name>-seed<N>``."""
    if trials < 1:
        raise ConfigError(f"trials={trials}: at least one trial")
    summaries = []
    for seed in range(config.seed, config.seed + trials):
        trial = replace(config, [f"seed={seed}", f"name={config.name}-seed{seed}"])
        log(f"--- {trial.name}")
        summaries.append(runner(trial, resume=resume, overwrite=overwrite, log=log))
    return summaries


def evaluate_checkpoint(
    path: str | Path, split: str = "test", overrides: list[str] | None = None, device: str = "auto"
) -> dict[str, Any]:
    """Accuracy (top-1/top-5) and loss of a run's deployable student on ``split``.

    ``path``: a run directory (its ``student.pt``, else ``best.pt``), a ``student.pt`` or a
    ``best.pt``/``last.pt``. ``overrides`` change the data section (e.g. ``data.root=...``).
    """
    target = resolve_checkpoint_path(path)
    payload = read_checkpoint(target)
    torch_device = resolve_device(device)
    if isinstance(payload, dict) and payload.get("kind") == STUDENT_KIND:
        model, config, _ = student_from_payload(payload)
        config = replace(config, overrides or [])
        data = build_data(config.data, config.seed)
    else:
        if not isinstance(payload, dict) or "config" not in payload:
            raise ConfigError(f"{target} is not a kdistill run checkpoint; evaluate a run directory or student.pt")
        config = load_config(base=payload["config"], overrides=overrides)
        data = build_data(config.data, config.seed)
        model = build_method(config, data_info(data, config.data.batch_size))
        load_method_state(model, payload["method_state"])
    model = model.to(torch_device)
    dataset = {"train": data.train, "val": data.val, "test": data.test}.get(split)
    if dataset is None:
        raise ConfigError(f"split {split!r} is not available for {config.data.name} (train, val, test)")
    loader = make_loader(dataset, config.data.eval_batch_size, False, config.seed, config.data.num_workers)
    result = evaluate(model, loader, torch_device)
    return {"checkpoint": str(target), "split": split, "samples": len(dataset), **result}  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the demo (seed 002)

DEMO_BASE = {
    "data": {"name": "fashion_mnist", "batch_size": 128},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
    "schedule": {"name": "cosine"},
}
DEMO_TEACHER = {"name": "cnn", "kwargs": {"channels": [32, 64], "hidden": 512}}  # ~0.82M parameters
DEMO_STUDENT = {"name": "mlp", "kwargs": {"hidden": [128]}}  # ~0.10M parameters: 8x smaller, as in seed 002


def _demo_runs(
    common: list[str],
    trials: int,
    teacher_epochs: int,
    student_epochs: int,
    temperature: float,
    kd_weight: float,
    log: Callable[[str], None],
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The demo's three steps: the teacher, the student alone and the distilled student (their summaries)."""
    teacher_config = load_config(
        base={**DEMO_BASE, "name": "teacher_cnn", "student": DEMO_TEACHER},
        overrides=[*common, f"train.epochs={teacher_epochs}"],
    )
    log("=== 1/3 teacher: CNN on labels")
    teacher = fit(teacher_config, overwrite=True, log=log)
    student_common = [*common, f"train.epochs={student_epochs}"]
    log("=== 2/3 baseline: MLP student on labels alone")
    baseline_config = load_config(
        base={**DEMO_BASE, "name": "student_mlp", "student": DEMO_STUDENT}, overrides=student_common
    )
    baseline = run_trials(baseline_config, trials, overwrite=True, log=log)
    log("=== 3/3 distilled: MLP student with Hinton KD from the CNN")
    kd_method = {"name": "kd", "temperature": temperature, "ce_weight": 1.0 - kd_weight, "kd_weight": kd_weight}
    kd_config = load_config(
        base={
            **DEMO_BASE,
            "name": "student_mlp_kd",
            "student": DEMO_STUDENT,
            "method": kd_method,
            "teacher": {"checkpoint": teacher["run_dir"]},
        },
        overrides=student_common,
    )
    distilled = run_trials(kd_config, trials, overwrite=True, log=log)

    return teacher, baseline, distilled


def _demo_table(
    teacher: dict[str, Any], baseline: list[dict[str, Any]], distilled: list[dict[str, Any]], trials: int
) -> str:
    """The demo's markdown table: teacher, student alone, student + KD with its gain (mean ± std over seeds)."""
    base_acc = [s["final_test_acc"] for s in baseline]
    kd_acc = [s["final_test_acc"] for s in distilled]
    gain = mean_std([k - b for k, b in zip(kd_acc, base_acc)])
    rows = [
        [
            "teacher CNN",
            f"{teacher['student_parameters']:,}",
            "1",
            format_mean_std([teacher["final_test_acc"]]),
            "-",
            "",
        ],
        [
            "student MLP alone",
            f"{baseline[0]['student_parameters']:,}",
            str(trials),
            format_mean_std(base_acc),
            "-",
            "",
        ],
        [
            "student MLP + KD",
            f"{distilled[0]['student_parameters']:,}",
            str(trials),
            format_mean_std(kd_acc),
            format_mean_std([s["final_test_agreement"] for s in distilled]),
            f"{gain[0]:+.2f} ± {gain[1]:.2f}" if trials > 1 else f"{gain[0]:+.2f}",
        ],
    ]
    headers = ["model", "parameters", "trials", "test acc %", "teacher agreement %", "KD gain (pp)"]
    return markdown_table(headers, rows)


def demo(
    output_dir: str = "runs/demo",
    trials: int = 3,
    teacher_epochs: int = 4,
    student_epochs: int = 10,
    temperature: float = 10.0,
    kd_weight: float = 0.5,
    train_subset: int | None = None,
    overrides: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Seed 002's story on Fashion-MNIST: teacher CNN, student MLP alone, student MLP distilled.

    Loss weights follow seed 002: ``(1 - lambda) * CE + lambda * T^2 * KL`` with T = 10, lambda = 0.5.
    Returns the table (markdown) and the summaries; writes ``demo.md`` and ``demo_test_acc.png``.
    """
    started = time.time()
    out = Path(output_dir)
    common = [
        f"output_dir={output_dir}",
        f"data.train_subset={'null' if train_subset is None else train_subset}",
        *(overrides or []),
    ]
    teacher, baseline, distilled = _demo_runs(
        common, trials, teacher_epochs, student_epochs, temperature, kd_weight, log
    )
    table = _demo_table(teacher, baseline, distilled, trials)
    wall = time.time() - started
    note = (
        f"Fashion-MNIST test accuracy (last epoch; mean ± sample std over seeds). Teacher {teacher_epochs} epochs, "
        f"students {student_epochs} epochs, KD T={temperature:g}, lambda={kd_weight:g}. Wall time {wall:.0f} s."
    )
    runs = [teacher["run_dir"], *(s["run_dir"] for s in baseline + distilled)]
    plot = plot_metric(
        runs[1:],
        "test_acc",
        out / "demo_test_acc.png",
        "Fashion-MNIST: MLP student alone vs KD",
        references={"teacher CNN": teacher["final_test_acc"]},
    )
    (out / "demo.md").write_text(f"{table}\n\n{note}\n")
    log("\n" + table + "\n\n" + note + f"\nRun directories under {out}/; plot: {plot}")
    return {"table": table, "teacher": teacher, "baseline": baseline, "distilled": distilled, "wall_time_s": wall}
