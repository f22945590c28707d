"""The whole ``kdistill compress`` (:func:`compress`): check, measure the teacher, screen, search, finish, report."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from kdistill.compress import report
from kdistill.compress.search import (
    CANDIDATE,
    TEACHER_LIVE,
    TEACHER_PASSES,
    TEACHER_VAL,
    USED,
    CompressSpec,
    Log,
    Meter,
    Screen,
    SearchStudies,
    best_candidate,
    candidates,
    check_spec,
    finish,
    primary_value,
    run_search,
    shown_measure,
    teacher_and_data,
)
from kdistill.runtime.io import atomic_write_text


def compress(spec: CompressSpec, log: Log = print) -> dict[str, Any]:
    """Screen, search, finish and report (see :mod:`kdistill.compress.search`); returns ``summary.json``'s content."""
    started = time.perf_counter()
    check_spec(spec)
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    teacher, data, info = teacher_and_data(spec.config)
    meter = Meter(spec, teacher, info)
    relative = [limit.describe() for limit in spec.budget.limits if limit.relative]
    log(f"teacher on {spec.runtime}: " + ", ".join(shown_measure(k, v) for k, v in meter.teacher.items()))
    log(
        f"budget: {spec.budget.describe()}"
        + (" (relative limits measured against the teacher here)" if relative else "")
    )
    record = {"runtime": spec.runtime, "host": socket.gethostname(), "measured": meter.teacher}
    atomic_write_text(json.dumps(record, indent=1), spec.out_dir / "teacher.json")
    screen = Screen(spec, meter, info)
    screen.run(spec, log)
    studies = run_search(spec, screen, log, spec.workers)
    table = candidates(spec, studies, screen)
    final = finish(spec, best_candidate(table), meter, screen, data, log)
    summary = _summary(spec, studies, screen, table, final, relative)
    summary["wall_minutes"] = (time.perf_counter() - started) / 60
    write_outputs(spec, summary, table, meter.teacher)
    log(f"report: {spec.out_dir / 'compress.md'}, plot: {spec.out_dir / 'compress.png'}")
    return summary


def _summary(
    spec: CompressSpec, studies: SearchStudies, screen: Screen, table, final: dict[str, Any], relative
) -> dict[str, Any]:
    trials = studies.completed()
    teacher_val = next((t.user_attrs[TEACHER_VAL] for t in trials if t.user_attrs.get(TEACHER_VAL) is not None), None)
    return {
        "budget": spec.budget.describe(),
        "relative_limits": relative,
        "runtime": spec.runtime,
        "teacher": screen.meter.teacher,
        "teacher_val_acc": teacher_val,
        "space": spec.space.source,
        "rungs": spec.space.rungs(spec.config.train.epochs),
        "final_epochs": spec.config.train.epochs,
        "screened": len(screen.rows),
        "screened_within_budget": sum(1 for row in screen.rows.values() if not row["misses"]),
        "candidates_trained": len({t.user_attrs.get(CANDIDATE) for t in trials}),
        "runs": len(trials),
        "search_minutes": float(studies.sampling.user_attrs.get(USED, 0.0)) / 60,
        "teacher_live_samples_search": sum(int(t.user_attrs.get(TEACHER_LIVE) or 0) for t in trials),
        "teacher_split_passes_search": sum(int(t.user_attrs.get(TEACHER_PASSES) or 0) for t in trials),
        "front": sorted(c.candidate for c in table if c.front),
        "final": final,
    }


def write_outputs(spec: CompressSpec, summary: dict[str, Any], table, teacher: dict[str, float]) -> None:
    """``compress.md`` / ``.csv``, ``compress.png`` and ``summary.json`` in the output directory."""
    cost = lambda c: primary_value(spec, c.measured, teacher)  # noqa: E731
    report.write_tables(spec.out_dir, table, cost, header(spec, summary))
    limit = spec.budget.primary
    teacher_x = 1.0 if limit.relative else teacher[limit.key]
    teacher_point = (teacher_x, summary["teacher_val_acc"])
    report.plot(spec.out_dir / "compress.png", table, cost, spec.budget, teacher_point, summary["final"])
    atomic_write_text(json.dumps(summary, indent=1, default=str), spec.out_dir / "summary.json")


def header(spec: CompressSpec, summary: dict[str, Any]) -> str:
    final = summary["final"]
    verdict = (
        "**within the budget**" if final["meets_budget"] else "**MISSES the budget**: " + "; ".join(final["misses"])
    )
    relative = summary["relative_limits"]
    teacher_val = summary["teacher_val_acc"]
    lines = [
        f"# kdistill compress: {spec.config.name}",
        "",
        f"- budget: {summary['budget']} on {spec.runtime}"
        + (" (relative limits measured against the teacher in the same process, interleaved)" if relative else ""),
        "- teacher: " + ", ".join(shown_measure(k, v) for k, v in summary["teacher"].items())
        + (f", val acc {teacher_val:.2f}%" if teacher_val is not None else ""),
        f"- screened {summary['screened']} architectures, {summary['screened_within_budget']} within the budget; "
        f"{summary['candidates_trained']} candidates trained in {summary['runs']} runs (rungs of {summary['rungs']} "
        f"epochs), {summary['search_minutes']:.1f} min of search",
        f"- final ({summary['final_epochs']} epochs, {len(final['test_acc'])} seeds): {final['architecture']}, "
        f"test acc {final['test_acc_mean']:.2f} ± {final['test_acc_std']:.2f}%; on its ONNX file {verdict}",
        "",
        f"Validation accuracy at each candidate's furthest rung; `primary` is {spec.budget.primary.key}"
        + (" as a ratio to the teacher's" if spec.budget.primary.relative else "")
        + "; `*`: the Pareto front (accuracy up, primary down) of the trained candidates within the budget.",
    ]  # fmt: skip
    return "\n".join(lines)
