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

from kdistill.choices import FewLabels
from kdistill.compress.budget import parse_budget
from kdistill.compress.run import compress as run_compress
from kdistill.compress.search import CompressSpec
from kdistill.compress.space import default_space_path, load_space
from kdistill.config import Config, load_config, replace
from kdistill.contracts import ConfigError
from kdistill.data import build_data, data_info, make_loader
from kdistill.engine import loop
from kdistill.engine.builders import build_method, load_method_state, method_class, resolve_device
from kdistill.engine.evaluation import evaluate
from kdistill.engine.export import load_student, student_from_payload
from kdistill.engine.teacher_fill import cache_teacher
from kdistill.methods import METHODS
from kdistill.models.loading import STUDENT_KIND, read_checkpoint, resolve_checkpoint_path
from kdistill.report.batches import show_batch
from kdistill.report.experiments import runs_table, write_report
from kdistill.report.plots import plot_metric
from kdistill.report.tables import format_mean_std, markdown_table, mean_difference
from kdistill.track import build_sinks

__all__ = [
    "FewLabels",
    "cache_teacher",
    "compress",
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


def compress(
    config: str | Config | None,
    budget: list[str],
    overrides: list[str] | None = None,
    space: str | None = None,
    runtime: str = "onnxruntime",
    time_limit_s: float | None = None,
    max_candidates: int | None = None,
    trials: int = 3,
    int8: bool = False,
    out: str | Path | None = None,
    storage: str | None = None,
    workers: int = 1,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The best student of ``config``'s teacher within ``budget`` (``["params=0.1x", "latency=0.2x"]``): screened,
    searched, distilled, exported and re-measured (:mod:`kdistill.compress.search`); returns the summary.

    ``config``'s data, teacher and schedule (``train.epochs``: the final training's) are used; ``space`` defaults
    to the shipped one for the input size. The budget and the space are checked before anything is built.
    """
    limits = parse_budget(budget)  # a malformed budget is refused before the config is read
    base = config if isinstance(config, Config) else load_config(config, overrides or [])
    if isinstance(config, Config) and overrides:
        base = replace(base, overrides)
    if space is None:
        space = str(default_space_path(build_data(base.data, base.seed).input_shape))
    searched = load_space(space, METHODS.names())
    directory = Path(out) if out else Path(base.output_dir) / "compress" / base.name
    spec = CompressSpec(
        base, limits, searched, directory, runtime=runtime, time_limit_s=time_limit_s,
        max_candidates=max_candidates, trials=trials, int8=int8, storage=storage, workers=workers,
    )  # fmt: skip
    return run_compress(spec, log)


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


def _demo_student(name: str, common: list[str], extra: list[str], trials: int, log, **sections: Any):
    config = load_config(base={**DEMO_BASE, "name": name, "student": DEMO_STUDENT, **sections}, overrides=common)
    return run_trials(replace(config, extra), trials, overwrite=True, log=log)


def _demo_runs(
    common: list[str],
    trials: int,
    teacher_epochs: int,
    student_epochs: int,
    kd: dict[str, float],
    few: FewLabels | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The demo's runs: the teacher, the student alone and distilled on all labels, then the few-labels arms."""
    steps = 7 if few else 3
    teacher_config = load_config(
        base={**DEMO_BASE, "name": "teacher_cnn", "student": DEMO_TEACHER},
        overrides=[*common, f"train.epochs={teacher_epochs}"],
    )
    log(f"=== 1/{steps} teacher: CNN on all labels")
    runs: dict[str, Any] = {"teacher": fit(teacher_config, overwrite=True, log=log)}
    teacher = {"teacher": {"checkpoint": runs["teacher"]["run_dir"]}}
    epochs = [f"train.epochs={student_epochs}"]
    kd_method = {"name": "kd", "temperature": kd["temperature"], "ce_weight": 1 - kd["kd_weight"], **kd}
    log(f"=== 2/{steps} MLP student alone on all labels")
    runs["alone"] = _demo_student("student_mlp", common, epochs, trials, log)
    log(f"=== 3/{steps} MLP student with Hinton KD from the CNN (teacher outputs cached: paid once)")
    runs["kd"] = _demo_student("student_mlp_kd", common, epochs, trials, log, method=kd_method, **teacher)
    if few is not None:
        runs.update(_few_label_runs(common, trials, student_epochs, few, teacher, log))
    return runs


def _few_label_runs(
    common: list[str],
    trials: int,
    student_epochs: int,
    few: FewLabels,
    teacher: dict[str, Any],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The four few-labels arms (:class:`FewLabels`), steps 4-7 of the demo."""
    runs: dict[str, Any] = {}
    shared = ["data.stream_seed=0"]  # the same labelled images in every trial and every arm
    labelled_only = [*shared, f"data.train_subset={few.labelled}", f"train.epochs={few.alone_epochs}"]
    labelled_only += [f"train.eval_every={max(1, few.alone_epochs // 10)}", f"optim.lr={few.alone_lr}"]
    every_image = [*shared, f"data.labelled={few.labelled}", f"train.epochs={student_epochs}"]

    def kd(temperature: float, weight: float, **extra: Any) -> dict[str, Any]:
        return {"name": "kd", "temperature": temperature, "kd_weight": weight, "ce_weight": 1 - weight, **extra}

    log(f"=== 4/7 MLP student alone on {few.labelled:,} labelled images")
    runs["alone_few"] = _demo_student("few_labels_mlp", common, labelled_only, trials, log)
    log(f"=== 5/7 MLP student with KD on the same {few.labelled:,} images only (soft targets, no extra images)")
    runs["kd_same"] = _demo_student(
        "few_labels_mlp_kd_same_images", common, labelled_only, trials, log,
        method=kd(few.same_temperature, few.same_kd_weight), **teacher,
    )  # fmt: skip
    log(f"=== 6/7 MLP student: {few.labelled:,} labels + the teacher's hard labels (argmax) on every image")
    runs["pseudo_few"] = _demo_student(
        "few_labels_mlp_pseudo", common, every_image, trials, log,
        method=kd(1.0, few.pseudo_kd_weight, hard_labels=True), **teacher,
    )  # fmt: skip
    log(f"=== 7/7 MLP student with KD: {few.labelled:,} labels + the teacher's soft outputs on every image")
    runs["kd_few"] = _demo_student(
        "few_labels_mlp_kd", common, every_image, trials, log, method=kd(few.temperature, few.kd_weight), **teacher
    )
    return runs


def _gain(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> str:
    """Difference of the mean test accuracies ± its standard error, sqrt(s_a^2 / n_a + s_b^2 / n_b)."""
    delta, error = mean_difference([s["final_test_acc"] for s in before], [s["final_test_acc"] for s in after])
    if len(before) < 2 or len(after) < 2:
        return f"{delta:+.2f}"
    return f"{delta:+.2f} ± {error:.2f}"


def _demo_row(setting: str, model: str, summaries: list[dict[str, Any]], *gains: str) -> list[str]:
    agreement = [s["final_test_agreement"] for s in summaries if "final_test_agreement" in s]
    return [
        setting, model, f"{summaries[0]['student_parameters']:,}", str(len(summaries)),
        format_mean_std([s["final_test_acc"] for s in summaries]), format_mean_std(agreement) if agreement else "-",
        *gains, *[""] * (2 - len(gains)),
    ]  # fmt: skip


FEW_LABEL_ARMS = (  # (run key, the demo table's row)
    ("kd_same", "+ soft targets, the same {n} images"),
    ("pseudo_few", "+ teacher's hard labels, unlabelled images"),
    ("kd_few", "+ teacher's soft targets, unlabelled images"),
)


def _demo_table(runs: dict[str, Any], few: FewLabels | None) -> str:
    """The demo's markdown table: the teacher, per setting the student alone and distilled, each arm's difference
    to the student alone and to the row above, with its standard error."""
    rows = [
        _demo_row("all labels", "teacher CNN", [runs["teacher"]]),
        _demo_row("all labels", "student MLP alone", runs["alone"]),
        _demo_row("all labels", "student MLP + KD", runs["kd"], _gain(runs["alone"], runs["kd"])),
    ]
    if few is not None:
        setting = f"{few.labelled:,} labels"
        rows.append(_demo_row(setting, f"student MLP alone ({few.labelled:,} images)", runs["alone_few"]))
        above = runs["alone_few"]
        for key, label in FEW_LABEL_ARMS:
            step = _gain(above, runs[key]) if above is not runs["alone_few"] else ""
            name = label.format(n=f"{few.labelled:,}")
            rows.append(_demo_row(setting, name, runs[key], _gain(runs["alone_few"], runs[key]), step))
            above = runs[key]
    headers = ["setting", "model", "parameters", "trials", "test acc %", "teacher agreement %"]
    return markdown_table([*headers, "vs alone (pp)", "vs row above (pp)"], rows)


def _demo_note(few: FewLabels | None, teacher_epochs: int, student_epochs: int, kd: dict[str, float]) -> str:
    note = (
        f"Fashion-MNIST test accuracy of the last epoch, mean ± sample std over seeds; differences of the means ± "
        f"their standard error. Teacher {teacher_epochs} epochs; students {student_epochs} epochs, KD T="
        f"{kd['temperature']:g}, lambda={kd['kd_weight']:g}."
    )
    if few is not None:
        note += (
            f" Few labels: {few.labelled:,} labelled training images (the same ones in every trial and arm: only the "
            f"initialisation varies). On them alone ({few.alone_epochs} epochs, lr {few.alone_lr:g}): the student "
            f"alone, and KD (T={few.same_temperature:g}, lambda={few.same_kd_weight:g}). On every image "
            f"({student_epochs} epochs): the teacher's argmax as the label of the rest (lambda="
            f"{few.pseudo_kd_weight:g}), and KD (T={few.temperature:g}, lambda={few.kd_weight:g}). Settings chosen "
            f"on validation accuracy, with a 4-epoch teacher and 10-epoch students on every image (docs/results.md)."
        )
    return note


def demo(
    output_dir: str = "runs/demo",
    trials: int = 3,
    teacher_epochs: int = 3,
    student_epochs: int = 7,
    temperature: float = 10.0,
    kd_weight: float = 0.5,
    train_subset: int | None = None,
    overrides: list[str] | None = None,
    log: Callable[[str], None] = print,
    few_labels: FewLabels | None = FewLabels(),  # noqa: B008 (a frozen dataclass, as before it moved to choices.py)
) -> dict[str, Any]:
    """Seed 002's story on Fashion-MNIST: a teacher CNN, a student MLP alone and the student distilled, in two
    settings: all labels (seed 002's: ``(1 - lambda) * CE + lambda * T^2 * KL``, T = 10, lambda = 0.5), and
    ``few_labels`` (None: skip it), where distillation also uses the unlabelled images. Returns the table (markdown)
    and the summaries; writes ``demo.md`` and ``demo_test_acc.png``.
    """
    started = time.time()
    out = Path(output_dir)
    subset = [f"data.train_subset={train_subset}"] if train_subset is not None else []
    common = [f"output_dir={output_dir}", *subset, *(overrides or [])]
    kd = {"temperature": temperature, "kd_weight": kd_weight}
    runs = _demo_runs(common, trials, teacher_epochs, student_epochs, kd, few_labels, log)
    table = _demo_table(runs, few_labels)
    wall = time.time() - started
    note = _demo_note(few_labels, teacher_epochs, student_epochs, kd) + f" Wall time {wall:.0f} s."
    panels = {"all labels: MLP student alone vs KD": [s["run_dir"] for arm in ("alone", "kd") for s in runs[arm]]}
    if few_labels is not None:
        arms = ("alone_few", *(key for key, _ in FEW_LABEL_ARMS))
        panels[f"{few_labels.labelled:,} labels: what each arm adds"] = [s["run_dir"] for a in arms for s in runs[a]]
    plot = plot_metric(
        panels, "test_acc", out / "demo_test_acc.png", references={"teacher CNN": runs["teacher"]["final_test_acc"]},
        x="step",
    )  # fmt: skip
    (out / "demo.md").write_text(f"{table}\n\n{note}\n")
    log("\n" + table + "\n\n" + note + f"\nRun directories under {out}/; plot: {plot}")
    return {"table": table, **runs, "wall_time_s": wall}
