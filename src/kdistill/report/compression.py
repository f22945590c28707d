"""Compression report: what distillation bought, teacher vs deployable student, from run directories.

For each distillation run (``config.yaml``, ``summary.json``, ``student.pt``) the report measures the
student (``load_student(<run>/student.pt)``) and its teacher(s) (built from the run's ``teacher`` /
``extra_teachers`` sections with their weights):

- parameters;
- FLOPs per image, counted by ``torch.utils.flop_counter.FlopCounterMode`` on one input of the run's
  shape (its convention: 2 FLOPs per multiply-add, so ``nn.Linear(64, 32)`` is 2 * 64 * 32);
- CPU latency per image at batch 1 and throughput at batch 64: warm-up, then the median of repeats,
  under ``torch.inference_mode`` with ``torch.get_num_threads()`` threads (or ``SpeedSettings.threads``);
- the size of ``student.pt`` and of the teacher's checkpoint file;
- test accuracy and teacher agreement from ``summary.json``;
- compression x = teacher parameters / student parameters and speed-up x = teacher latency / student
  latency (with several teachers: their sum, the ensemble the student replaces).

Runs that share a teacher list it once. ``compare_runs`` writes ``compression.md``, ``.csv``, ``.json``
and an accuracy-vs-latency plot ``compression.png``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdistill.config import Config, ModelConfig, load_config
from kdistill.contracts import CheckpointError, ConfigError, DataInfo
from kdistill.engine.export import load_student
from kdistill.models import build_model, count_parameters
from kdistill.models.loading import resolve_checkpoint_path
from kdistill.report.tables import markdown_table
from kdistill.runtime.timing import median_seconds
from kdistill.track import read_summary

THROUGHPUT_BATCH = 64
RUN_FILES = ("config.yaml", "summary.json")


@dataclass
class SpeedSettings:
    """How latency and throughput are timed: warm-up calls, then the median of ``repeats`` calls."""

    repeats: int = 30  # at batch 1
    batch_repeats: int = 10  # at batch THROUGHPUT_BATCH
    warmup: int = 5
    threads: int | None = None  # torch CPU threads while measuring; None keeps torch.get_num_threads()

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.batch_repeats < 1 or self.warmup < 0:
            raise ConfigError(
                f"timing needs at least 1 repeat at each batch size and warmup >= 0, got repeats={self.repeats}, "
                f"batch_repeats={self.batch_repeats}, warmup={self.warmup}"
            )
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")


@dataclass
class Entry:
    """One model of the report before measuring: what it is, where its weights live, what it scored."""

    label: str
    role: str  # "teacher" or "student (<method>)"
    architecture: str
    model: nn.Module
    input_shape: tuple[int, ...]
    weights_file: Path | None
    test_acc: float | None
    test_agreement: float | None = None
    teachers: tuple[str, ...] = ()  # labels of the teachers a student is compared against


# ----------------------------------------------------------------------------- measuring


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass on one image of ``input_shape`` (C, H, W), by ``FlopCounterMode``."""
    inputs = torch.zeros(1, *input_shape)  # (1, C, H, W)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(inputs)
    return int(counter.get_total_flops())


def median_call_seconds(model: nn.Module, inputs: torch.Tensor, repeats: int, warmup: int) -> float:
    """Median wall time of ``model(inputs)`` over ``repeats`` calls after ``warmup`` untimed ones."""
    with torch.inference_mode():
        return median_seconds(lambda: model(inputs), repeats, warmup)


def measure_speed(model: nn.Module, input_shape: Sequence[int], settings: SpeedSettings) -> dict[str, float]:
    """CPU latency per image at batch 1 (ms) and throughput at batch ``THROUGHPUT_BATCH`` (images/s)."""
    generator = torch.Generator().manual_seed(0)
    single = torch.randn(1, *input_shape, generator=generator)  # (1, C, H, W)
    batch = torch.randn(THROUGHPUT_BATCH, *input_shape, generator=generator)  # (64, C, H, W)
    latency = median_call_seconds(model, single, settings.repeats, settings.warmup)
    batch_time = median_call_seconds(model, batch, settings.batch_repeats, max(1, settings.warmup // 2))
    return {"latency_ms_batch1": 1000.0 * latency, "throughput_batch64": THROUGHPUT_BATCH / batch_time}


def measure_entry(entry: Entry, settings: SpeedSettings) -> dict[str, Any]:
    """The report row of one model (raw numbers; ratios are added by ``add_ratios``)."""
    model = entry.model.eval()
    return {
        "model": entry.label,
        "role": entry.role,
        "architecture": entry.architecture,
        "parameters": count_parameters(model),
        "flops_per_image": count_flops(model, entry.input_shape),
        **measure_speed(model, entry.input_shape, settings),
        "file": str(entry.weights_file) if entry.weights_file else None,
        "file_bytes": os.path.getsize(entry.weights_file) if entry.weights_file else None,
        "test_acc": entry.test_acc,
        "test_agreement": entry.test_agreement,
        "teachers": list(entry.teachers),
    }


def add_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Students get compression x (parameters) and speed-up x (batch-1 latency) against their teachers."""
    by_label = {row["model"]: row for row in rows}
    for row in rows:
        teachers = [by_label[label] for label in row["teachers"]]
        if not teachers:
            row["compression"] = row["speedup"] = None
            continue
        row["compression"] = sum(t["parameters"] for t in teachers) / max(row["parameters"], 1)
        row["speedup"] = sum(t["latency_ms_batch1"] for t in teachers) / row["latency_ms_batch1"]
    return rows


# ----------------------------------------------------------------------------- reading runs


def read_run(run_dir: str | Path) -> tuple[Config, dict[str, Any], nn.Module, DataInfo, Path]:
    """A finished distillation run: its config, summary, deployable student, data info and student.pt."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ConfigError(
            f"{path} is not a directory; `kdistill compare` takes run directories "
            "(config.yaml, summary.json, student.pt)"
        )
    missing = [name for name in RUN_FILES if not (path / name).is_file()]
    if missing:
        raise ConfigError(
            f"{path} is not a finished kdistill run: it has no {' or '.join(missing)}. Pass the directory a "
            f"`kdistill distill` run wrote (an unfinished one completes with --resume)"
        )
    student_file = path / "student.pt"
    if not student_file.is_file():
        raise CheckpointError(
            f"{path} has no student.pt (the deployable student every finished run exports); "
            "finish the run with --resume"
        )
    config = load_config(path / "config.yaml")
    if not config.teachers():
        raise ConfigError(
            f"{path} has no teacher in its config.yaml (method {config.method.name!r}): pass distillation runs; "
            f"their teachers are measured from their config"
        )
    student, _, info = load_student(student_file)
    return config, read_summary(path), student, info, student_file


def teacher_label(model_config: ModelConfig, weights_file: Path | None) -> str:
    """A teacher's name in the table: its run directory's name, else its file or architecture name."""
    if weights_file is None:
        return model_config.name
    return weights_file.parent.name if weights_file.name in ("student.pt", "best.pt", "last.pt") else weights_file.stem


def teacher_accuracy(summary: dict[str, Any], teacher_count: int, weights_file: Path | None) -> float | None:
    """The run's ``teacher_test_acc`` for one teacher (with several it is the ensemble's, so each
    teacher's own run summary is used when its weights are that run's student.pt)."""
    if teacher_count == 1:
        return summary.get("teacher_test_acc")
    own_summary = weights_file.parent / "summary.json" if weights_file is not None else None
    if weights_file is not None and weights_file.name == "student.pt" and own_summary and own_summary.is_file():
        return json.loads(own_summary.read_text()).get("final_test_acc")
    return None


def teacher_entries(run_dir: Path, config: Config, summary: dict[str, Any], info: DataInfo) -> list[Entry]:
    """The run's teachers, built with their weights (a relative checkpoint path is read from the cwd)."""
    entries = []
    teacher_configs = config.teachers()
    for index, model_config in enumerate(teacher_configs):
        where = "teacher" if index == 0 else f"extra_teachers[{index - 1}]"
        try:
            weights_file = resolve_checkpoint_path(model_config.checkpoint) if model_config.checkpoint else None
            model = build_model(model_config, info.num_classes, info.input_shape, where=where)
        except CheckpointError as error:
            raise CheckpointError(
                f"{run_dir}: {where}.checkpoint: {error} (a relative path is read from the current directory: "
                f"run `kdistill compare` where the run was trained)"
            ) from None
        label = teacher_label(model_config, weights_file)
        accuracy = teacher_accuracy(summary, len(teacher_configs), weights_file)
        entries.append(Entry(label, "teacher", model_config.name, model, info.input_shape, weights_file, accuracy))
    return entries


def collect_entries(run_dirs: Sequence[str | Path]) -> list[Entry]:
    """Teachers (each once, in order of first use) then students, for the given runs."""
    if not run_dirs:
        raise ConfigError("no run directories given")
    teachers: dict[str, Entry] = {}
    students = []
    for run_dir in run_dirs:
        config, summary, student, info, student_file = read_run(run_dir)
        run_teachers = teacher_entries(Path(run_dir), config, summary, info)
        for teacher in run_teachers:
            key = str(teacher.weights_file.resolve()) if teacher.weights_file else teacher.label
            if key not in teachers and any(t.label == teacher.label for t in teachers.values()):
                teacher.label = f"{teacher.label} #{len(teachers) + 1}"  # another teacher of the same name
            teacher.label = teachers.setdefault(key, teacher).label
        students.append(
            Entry(
                summary.get("name", Path(run_dir).name),
                f"student ({config.method.name})",
                config.student.name,
                student,
                info.input_shape,
                student_file,
                summary.get("final_test_acc"),
                summary.get("final_test_agreement"),
                tuple(t.label for t in run_teachers),
            )
        )
    return [*teachers.values(), *students]


# ----------------------------------------------------------------------------- writing


def _si(value: float, unit: str = "") -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


def _optional(value: float | None, pattern: str) -> str:
    return "-" if value is None or not math.isfinite(value) else pattern.format(value)


COLUMNS = [
    "model",
    "role",
    "architecture",
    "params",
    "FLOPs / image",
    "latency ms / image (batch 1)",
    f"images/s (batch {THROUGHPUT_BATCH})",
    "file size",
    "test acc %",
    "agreement %",
    "compression x",
    "speed-up x",
]


def compression_markdown(rows: list[dict[str, Any]], settings: SpeedSettings, threads: int) -> str:
    """The report as a heading line (how it was measured) and one Markdown table row per model."""
    table_rows = [
        [
            row["model"],
            row["role"],
            row["architecture"],
            f"{row['parameters']:,}",
            _si(row["flops_per_image"]),
            f"{row['latency_ms_batch1']:.3f}",
            f"{row['throughput_batch64']:,.0f}",
            _si(row["file_bytes"], "B") if row["file_bytes"] is not None else "-",
            _optional(row["test_acc"], "{:.2f}"),
            _optional(row["test_agreement"], "{:.2f}"),
            _optional(row["compression"], "{:.1f}x"),
            _optional(row["speedup"], "{:.1f}x"),
        ]
        for row in rows
    ]
    heading = (
        f"CPU, {threads} thread(s) (torch.get_num_threads()); latency: median of {settings.repeats} calls at batch 1, "
        f"throughput: median of {settings.batch_repeats} at batch {THROUGHPUT_BATCH}, after warm-up; "
        f"FLOPs by torch FlopCounterMode (2 per multiply-add); compression = teacher / student parameters, "
        f"speed-up = teacher / student latency."
    )
    return heading + "\n\n" + markdown_table(COLUMNS, table_rows)


def plot_compression(rows: list[dict[str, Any]], path: str | Path, threads: int) -> Figure:
    """Test accuracy (%) against batch-1 latency (ms, log x), one labelled point per model, teachers as stars."""
    figure = Figure(figsize=(6.5, 4.5))
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    for role, marker, color, size in (("teacher", "*", "tab:red", 220), ("student", "o", "tab:blue", 60)):
        chosen = [r for r in rows if r["role"].startswith(role) and r["test_acc"] is not None]
        if chosen:
            axis.scatter(
                [r["latency_ms_batch1"] for r in chosen],
                [r["test_acc"] for r in chosen],
                marker=marker,
                s=size,
                color=color,
                label=role,
                zorder=3,
            )
        for row in chosen:
            axis.annotate(
                row["model"],
                (row["latency_ms_batch1"], row["test_acc"]),
                textcoords="offset points",
                xytext=(6, 4),
                fontsize=8,
            )
    axis.set_xscale("log")
    axis.xaxis.set_minor_formatter(NullFormatter())  # minor log ticks unlabelled: their labels overlap
    axis.margins(x=0.3, y=0.15)  # room for the point labels
    axis.set_xlabel("CPU latency per image, batch 1 (ms, log scale)")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(f"accuracy vs latency ({threads} CPU thread(s))")
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    figure.tight_layout()
    figure.savefig(Path(path), dpi=120)
    return figure


def write_csv(rows: list[dict[str, Any]], path: Path, threads: int) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*rows[0].keys(), "threads"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "teachers": ";".join(row["teachers"]), "threads": threads})


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads (None: unchanged), then restore the count."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class CompressionReport:
    markdown: str
    rows: list[dict[str, Any]]
    figure: Figure
    files: dict[str, Path]


def compare_runs(
    run_dirs: Sequence[str | Path], out_dir: str | Path, settings: SpeedSettings | None = None
) -> CompressionReport:
    """Measure every run's student and teacher(s) and write compression.{md,csv,json,png} to ``out_dir``."""
    settings = settings or SpeedSettings()
    entries = collect_entries(run_dirs)
    with torch_threads(settings.threads):
        threads = torch.get_num_threads()
        rows = add_ratios([measure_entry(entry, settings) for entry in entries])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {kind: out / f"compression.{kind}" for kind in ("md", "csv", "json", "png")}
    markdown = compression_markdown(rows, settings, threads)
    files["md"].write_text(markdown + "\n")
    write_csv(rows, files["csv"], threads)
    metadata = {"device": "cpu", "throughput_batch": THROUGHPUT_BATCH, **vars(settings), "threads": threads}
    files["json"].write_text(json.dumps({**metadata, "rows": rows}, indent=2) + "\n")
    figure = plot_compression(rows, files["png"], threads)
    return CompressionReport(markdown, rows, figure, files)
