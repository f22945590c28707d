"""Command line: ``kdistill train | distill | cache-teacher | compress | sweep | tune | eval | export | demo |
report | show-batch | compare | models | datasets | methods``.

Building the parser needs nothing heavy (its choices and defaults come from :mod:`kdistill.choices`), so
``kdistill --help`` answers without importing torch; each command's handler imports what it runs when it runs
(tests/test_cli_startup.py holds both)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from kdistill.choices import EXPORT_FORMATS, SWEEP_OBJECTIVES, FewLabels
from kdistill.errors import (
    CheckpointError,
    ConfigError,
    DatasetNotFoundError,
    DiskFullError,
    TrainingDivergedError,
    TrainingInterrupted,
)

CONFIG_HELP = (
    "YAML config file (see configs/). Every key can also be set with --set; without a file the "
    "defaults of kdistill.config.Config apply."
)
SET_HELP = (
    "override one config value, dotted key = YAML literal, e.g. --set train.epochs=3 "
    "--set student.kwargs='{hidden: [256]}'. Repeatable. Types are checked and unknown keys are "
    "rejected with the list of valid ones."
)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help=CONFIG_HELP)
    parser.add_argument(
        "--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in <output_dir>/<name> from its last.pt "
        "(exact: optimizer, schedule, epoch and RNG state are restored)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="delete an existing run directory of the same name first"
    )
    parser.add_argument(
        "--trials",
        type=positive_int,
        default=1,
        help="repeat with this many consecutive seeds (runs named <name>-seed<N>) and print mean ± std (default 1)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="check the config (every value and name), print it resolved as YAML and exit without training",
    )


Subcommands = argparse._SubParsersAction  # what add_subparsers returns


def _add_run_command(commands: Subcommands) -> None:
    """train and distill"""
    train = commands.add_parser(
        "train",
        help="train a teacher or a baseline student on labels (method ce)",
        description="Train a model on labels only (the `ce` method, or another label-only method).",
    )
    _add_run_options(train)
    distill = commands.add_parser(
        "distill",
        help="distil a student from one or more teachers",
        description="Train the student from the teacher(s) with the configured method (kd, funmatch, simkd, ...).",
    )
    _add_run_options(distill)


def _add_cache_command(commands: Subcommands) -> None:
    """cache-teacher"""
    cache = commands.add_parser(
        "cache-teacher",
        help="run the teacher(s) once over everything a config's training would show them and keep the logits",
        description="Fill <output_dir>/.teacher-cache ahead of training: the val/test logits, the train logits when "
        "nothing is augmented, and with augmentation the logits of every epoch of the replayed data stream "
        "(per-sample crops and flips, the method's mixup and crops), exactly as training will draw them. Every "
        "later run of the same stream (trials with the same data.stream_seed, sweep points that change only the "
        "loss) reads them instead of running the teacher. Entries already there are checked, not recomputed.",
    )
    _add_config_argument(cache)
    cache.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)


def _add_tune_command(commands: Subcommands) -> None:
    """tune"""
    tune = commands.add_parser(
        "tune",
        help="grid over learning rate and schedule length (e.g. teacher fine-tuning), ranked by validation accuracy",
        description="A preset of `kdistill sweep`: train the config at every (learning rate, epochs) point, --trials "
        "seeds each, and rank the points by mean best validation accuracy (the test split is never used to choose). "
        "Resumable like any sweep: the same command continues it. With --bit-hyperrule "
        "the optimiser, schedule, resolution and mixup first follow BiT-HyperRule for the dataset's size.",
    )
    tune.add_argument("--config", "-c", help=CONFIG_HELP)
    tune.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    tune.add_argument(
        "--lrs", type=float, nargs="+", required=True, help="learning rates to try, e.g. --lrs 1e-3 3e-3 1e-2"
    )
    tune.add_argument(
        "--epochs",
        type=int,
        nargs="+",
        help="schedule lengths to try (default: the config's train.epochs); step milestones are rescaled",
    )
    tune.add_argument("--trials", type=positive_int, default=1, help="seeds per point (default 1)")
    tune.add_argument(
        "--bit-hyperrule",
        action="store_true",
        help="apply BiT-HyperRule (SGD, warmup, step decays, mixup, resolution) sized for the dataset before the grid",
    )
    tune.add_argument("--out", help="sweep directory (default <output_dir>/sweeps/<name>-tune)")
    tune.add_argument("--workers", type=positive_int, default=1, help="worker processes on this machine (default 1)")


def _add_eval_command(commands: Subcommands) -> None:
    """eval"""
    evaluate = commands.add_parser(
        "eval",
        help="accuracy (top-1/top-5) and loss of a run's student on a split",
        description="Evaluate a run directory (its student.pt, else best.pt), a student.pt, or a best.pt/last.pt.",
    )
    evaluate.add_argument("checkpoint", help="run directory or checkpoint file")
    evaluate.add_argument(
        "--split", default="test", choices=["train", "val", "test"], help="which split (default test)"
    )
    evaluate.add_argument(
        "--set",
        "-s",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the run's data settings, e.g. --set data.root=/data",
    )
    evaluate.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")


def _add_export_command(commands: Subcommands) -> None:
    """export"""
    export = commands.add_parser(
        "export",
        help="write a run's student as TorchScript, ONNX or safetensors and check parity",
        description="Export <run>/student.pt (for SimKD: encoder + projector + the teacher's classifier) to "
        "<run>/export/student.{pt,onnx,safetensors} with student.json (classes, input shape, normalisation), then "
        "compare the export's logits with the PyTorch student's on the first test images of the run's dataset "
        "(written to <run>/export/parity_<format>.json). ONNX needs pip install 'kdistill[export]'.",
    )
    export.add_argument("run", help="run directory (with student.pt)")
    export.add_argument("--format", "-f", required=True, choices=list(EXPORT_FORMATS), help="artifact format")
    export.add_argument(
        "--output",
        "-o",
        help="artifact path (default <run>/export/student.<ext>); the metadata goes next to it as <stem>.json",
    )
    export.add_argument(
        "--parity-samples", type=int, default=256, help="test images for the parity check (default 256)"
    )


def _add_demo_command(commands: Subcommands) -> None:
    """demo"""
    demo = commands.add_parser(
        "demo",
        help="seed 002's story on Fashion-MNIST: teacher CNN, MLP alone, MLP + KD, with all labels and with few",
        description="Train a CNN teacher, then an MLP student alone and an MLP student with Hinton KD on "
        "Fashion-MNIST in two settings: all labels (seed 002's), and --labelled N labelled images with the rest "
        "unlabelled (the student alone trains on the labelled ones, the distilled student also on the teacher's "
        "outputs for the others). Prints the table with each KD gain (about 4-5 minutes on 2 CPU cores).",
    )
    demo.add_argument(
        "--trials", type=positive_int, default=3, help="seeds per student (mean ± std over them; default 3)"
    )
    demo.add_argument("--teacher-epochs", type=int, default=3, help="epochs of the CNN teacher (default 3)")
    demo.add_argument(
        "--student-epochs", type=int, default=7, help="epochs of each distilled and all-labels student run (default 7)"
    )
    demo.add_argument("--temperature", type=float, default=10.0, help="KD temperature T (default 10, seed 002's best)")
    demo.add_argument(
        "--kd-weight",
        type=float,
        default=0.5,
        help="lambda: loss = (1-lambda) CE + lambda T^2 KL (default 0.5, seed 002)",
    )
    demo.add_argument("--train-subset", type=int, default=None, help="train on a random subset of N images (quicker)")
    demo.add_argument(
        "--labelled",
        type=int,
        default=FewLabels.labelled,
        help=f"labelled images of the few-labels setting (default {FewLabels.labelled}; 0 skips that setting)",
    )
    demo.add_argument("--output-dir", default="runs/demo", help="where the run directories go (default runs/demo)")
    demo.add_argument(
        "--set",
        "-s",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config value of all demo runs, e.g. --set train.device=cuda",
    )


def _add_report_command(commands: Subcommands) -> None:
    """report"""
    report = commands.add_parser(
        "report",
        help="tables (mean ± std over trials, differences to a baseline) and plots from run or sweep directories",
        description="Read run directories (given, or found at any depth below the given directories, e.g. a sweep "
        "directory's runs/), group them (--by config keys, default: run name without -seedN) and print one row per "
        "group: trials, mean ± sample std of test accuracy (last epoch and at the best validation epoch), top-5, "
        "test loss, teacher agreement and KL, parameters, pruning ratio, wall time; with --baseline the difference "
        "of means and its standard error. Runs without summary.json (pruned, failed or interrupted) are counted, "
        "not averaged. Writes report.md, report.csv and PNG plots (test accuracy and loss per epoch, each numeric "
        "--by key against top-1/top-5, accuracy vs pruning ratio) into --out.",
    )
    report.add_argument(
        "runs", nargs="+", metavar="RUNS_OR_SWEEP_DIR", help="run directories, or directories holding them"
    )
    report.add_argument(
        "--by",
        metavar="KEYS",
        help="comma-separated config keys to group by, e.g. method.loss,optim.lr (default: run name without -seedN)",
    )
    report.add_argument(
        "--baseline",
        metavar="GROUP",
        help="a group label as printed (e.g. method.loss=l2,optim.lr=0.05, or a run name without -seedN): "
        "differences of mean test accuracy to it, ± their standard error",
    )
    report.add_argument(
        "--out",
        metavar="DIR",
        help="directory for report.md, report.csv and the plots (default: the sweep directory when it is the only "
        "path given, else ./report)",
    )
    report.add_argument("--no-plots", action="store_true", help="write the tables only")
    report.add_argument(
        "--plot",
        metavar="METRIC",
        action="append",
        default=[],
        help="also plot this metrics.jsonl column per epoch (repeatable; test_acc and test_loss always are)",
    )
    report.add_argument(
        "--tsne",
        type=positive_int,
        metavar="N",
        help="for each run directory given (a distillation run): t-SNE of the teacher's and the student's "
        "penultimate features on N test images, coloured by class (tsne_<run>.png)",
    )


def _add_show_batch_command(commands: Subcommands) -> None:
    """show-batch"""
    show = commands.add_parser(
        "show-batch",
        help="draw the first training batch as the student sees it, and the learning-rate schedule",
        description="Build the config's training loader and method as `train`/`distill` do and draw the first "
        "batch of --epoch after the method's batch-level augmentation (mixup, crops) with the trainer's own "
        "per-epoch generator, de-normalised for display, labels as titles (both labels and weights for mixup that "
        "records them). Also draws the learning rate of every optimisation step of the run (<out stem>_lr.png).",
    )
    _add_config_argument(show)
    show.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    show.add_argument(
        "--out", "-o", default="batch.png", help="image grid (default batch.png); the schedule goes to <stem>_lr.png"
    )
    show.add_argument("--grid", type=positive_int, default=5, help="draw grid x grid images (default 5)")
    show.add_argument("--epoch", type=int, default=0, help="whose first batch, 0-based (default 0)")


def _add_listing_command(commands: Subcommands) -> None:
    """models, datasets, methods"""
    models = commands.add_parser("models", help="list the model zoo (name, family, parameters, source)")
    models.add_argument("--num-classes", type=int, default=100, help="classes for the parameter count (default 100)")
    models.add_argument("--input-shape", default="3,32,32", help="C,H,W for the parameter count (default 3,32,32)")
    commands.add_parser("datasets", help="list the datasets and how to get each")
    commands.add_parser("methods", help="list the distillation methods and their options")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdistill",
        description="Knowledge distillation: train teachers, distil students, evaluate and report. "
        "Every run writes <output_dir>/<name>/ with config.yaml, metrics.jsonl, last.pt, best.pt, student.pt, "
        "summary.json.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_run_command,
        _add_cache_command,
        _add_compress_command,
        _add_sweep_command,
        _add_tune_command,
        _add_eval_command,
        _add_export_command,
        _add_demo_command,
        _add_report_command,
        _add_show_batch_command,
        _add_compare_command,
    ):
        add(commands)
    _add_listing_command(commands)
    return parser


def _add_config_argument(parser: argparse.ArgumentParser) -> None:
    """CONFIG as a positional argument, or as ``--config`` like ``train`` / ``distill`` / ``tune`` take it."""
    parser.add_argument("config", nargs="?", help=CONFIG_HELP)
    parser.add_argument("--config", "-c", dest="config_option", metavar="CONFIG", help="the same, as an option")


def _config_path(args: argparse.Namespace) -> str | None:
    if args.config and args.config_option and args.config != args.config_option:
        raise ConfigError(f"two configs given: {args.config} and --config {args.config_option}; give one")
    return args.config or args.config_option


def _run(args: argparse.Namespace) -> int:
    from kdistill import api
    from kdistill.config import load_config, to_dict
    from kdistill.engine.builders import preflight

    config = preflight(load_config(args.config, args.overrides))
    if args.print_config:
        print(yaml.safe_dump(to_dict(config), sort_keys=False))
        return 0
    runner = api.train if args.command == "train" else api.distill
    if args.trials > 1:
        summaries = api.run_trials(config, args.trials, overwrite=args.overwrite, resume=args.resume, runner=runner)
        print(api.runs_table([s["run_dir"] for s in summaries]))
    else:
        summary = runner(config, resume=args.resume, overwrite=args.overwrite)
        print(json.dumps(summary, indent=2))
    return 0


def _tune(args: argparse.Namespace) -> int:
    from kdistill.config import load_config, replace
    from kdistill.data import build_data
    from kdistill.sweep import run_sweep
    from kdistill.tune import as_overrides, bit_hyperrule, tune_spec

    config = load_config(args.config, args.overrides)
    if args.bit_hyperrule:
        data = build_data(config.data, config.seed)
        rule = bit_hyperrule(len(data.train), data.input_shape[1:], config.data.batch_size)  # type: ignore[arg-type]
        config = replace(config, as_overrides(rule) + args.overrides)  # explicit --set values win
        print(f"BiT-HyperRule for {len(data.train)} training images: {rule}")  # type: ignore[arg-type]

    epochs = args.epochs or [config.train.epochs]
    return run_sweep(tune_spec(config, args.lrs, epochs, args.trials, args.out, args.workers)).exit_code


def _add_sweep_command(commands: Subcommands) -> None:
    """sweep"""
    sweep = commands.add_parser(
        "sweep",
        help="grid or Optuna search over any config keys, several seeds per point, resumable, many workers",
        description="Run every point of a grid (or --search: Optuna TPE over ranges), --trials seeds each, and rank "
        "the points by mean validation accuracy (never test). The sweep directory holds sweep.yaml, the study "
        "(SQLite study.db unless --storage), runs/<point>-seed<N>/, points.md/.csv and the report grouped by the "
        "swept keys. Run the same command again to continue a killed sweep: finished points are not repeated and "
        "an interrupted point continues from its checkpoints. Sweeping train.epochs keeps a step schedule's "
        "milestones at the same fractions.",
    )
    _add_config_argument(sweep)
    sweep.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    sweep.add_argument(
        "--param",
        "-p",
        dest="params",
        action="append",
        default=[],
        metavar="KEY=SPEC",
        help="a swept key: values as YAML literals (method.temperature=1,4,10; commas inside [] stay in the value) "
        "or, with --search, a range: loguniform:1e-3:1e-1, uniform:0:1, int:1:10, choice:a,b,c. Repeatable",
    )
    sweep.add_argument("--trials", type=positive_int, default=1, help="seeds per point (default 1)")
    sweep.add_argument("--search", action="store_true", help="Optuna TPE search instead of the full grid")
    sweep.add_argument("--n-trials", type=positive_int, default=10, help="points a --search evaluates (default 10)")
    sweep.add_argument(
        "--prune",
        action="store_true",
        help="stop a point early when its first seed's validation accuracy is below the median of earlier points "
        "at the same epoch (Optuna MedianPruner)",
    )
    sweep.add_argument(
        "--prune-startup", type=positive_int, default=2, help="points finished before pruning starts (default 2)"
    )
    sweep.add_argument(
        "--objective",
        choices=SWEEP_OBJECTIVES,
        default="final_val_acc",
        help="what ranks the points, averaged over the seeds: last-epoch or best validation accuracy "
        "(default final_val_acc)",
    )
    sweep.add_argument("--out", help="sweep directory (default <output_dir>/sweeps/<name>)")
    sweep.add_argument(
        "--storage",
        metavar="URL",
        help="database of the study, shared by every worker and machine, e.g. postgresql://user@host/db "
        "(pip install 'kdistill[postgres]'); default SQLite <out>/study.db",
    )
    sweep.add_argument("--workers", type=positive_int, default=1, help="worker processes on this machine (default 1)")
    sweep.add_argument(
        "--stale-minutes",
        type=float,
        default=30.0,
        help="a trial of another machine without a heartbeat for this long is taken over (default 30)",
    )


def _sweep(args: argparse.Namespace) -> int:
    from kdistill.config import load_config
    from kdistill.sweep import SweepSpec, default_sweep_dir, parse_param, run_sweep

    config = load_config(_config_path(args), args.overrides)
    out = Path(args.out) if args.out else default_sweep_dir(config)
    spec = SweepSpec(
        config, [parse_param(text) for text in args.params], out, trials=args.trials, search=args.search,
        n_trials=args.n_trials, prune=args.prune, prune_startup=args.prune_startup, objective=args.objective,
        storage=args.storage, workers=args.workers, stale_minutes=args.stale_minutes,
    )  # fmt: skip
    return run_sweep(spec).exit_code


def parse_duration(text: str) -> float:
    """argparse type: ``90s``, ``30m``, ``1.5h`` or plain seconds -> seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d*)?)\s*([smh]?)", text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a positive duration like 90s, 30m or 1.5h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def _add_compress_command(commands: Subcommands) -> None:
    """compress"""
    compress = commands.add_parser(
        "compress",
        help="given a teacher and a deployment budget, search, distil, export and re-measure the best student",
        description="Measure the teacher on the runtime; build and measure every architecture of the search space "
        "untrained (those over the budget are never trained); search candidates (architecture, method, settings, "
        "lr) with Optuna (validation accuracy up, the budget's primary quantity down) and successive halving "
        "(short runs first, the top 1/eta in Pareto order promoted), the teacher paid once through its cache; "
        "train the best candidate within the budget on the config's full schedule with --trials seeds, export it "
        "to ONNX (and int8 with --int8) and re-measure the budget on the exported file. Writes compress.md/.csv (every "
        "candidate and why it stopped), compress.png (accuracy against the budget, Pareto front) and summary.json "
        "into --out. Selection reads validation accuracy only (candidate runs also record their test accuracy, which "
        "the search never reads); the reported test accuracy is the final runs'. Run the same command again to "
        "continue a killed search.",
    )
    _add_config_argument(compress)
    compress.add_argument(
        "--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP
    )
    compress.add_argument(
        "--budget",
        "-b",
        action="append",
        default=[],
        metavar="QUANTITY=VALUE",
        help="a limit: params, flops, size (bytes of the artefact), latency (batch 1, ms) at most, throughput "
        "(images/s at a batch, @64 default) at least; absolute (params=100k, latency=0.5ms, size=2MB, "
        "throughput=5000@64) or relative to the teacher (params=0.1x, latency=0.2x: measured against it in this "
        "process). Repeatable, or several separated by commas",
    )
    compress.add_argument(
        "--space", help="search space YAML (default: configs/compress/space_small.yaml up to 28x28 inputs, "
        "space_cifar.yaml above)"
    )  # fmt: skip
    compress.add_argument(
        "--runtime",
        default="onnxruntime",
        choices=("onnxruntime", "torch", "cuda"),
        help="where latency and throughput are measured: ONNX Runtime CPU (default), PyTorch eager CPU, or CUDA",
    )
    compress.add_argument(
        "--time", type=parse_duration, metavar="DURATION", help="search time (30m, 2h): no candidate starts after it"
    )
    compress.add_argument("--max-candidates", type=positive_int, help="stop sampling new candidates after N")
    compress.add_argument("--trials", type=positive_int, default=3, help="seeds of the final training (default 3)")
    compress.add_argument(
        "--int8", action="store_true", help="also export int8 (ONNX Runtime static quantisation) and measure it"
    )
    compress.add_argument(
        "--workers", type=positive_int, default=1, help="search processes on this machine (default 1), each with "
        "its share of the cores; machines sharing one --storage and --out name search one study"
    )  # fmt: skip
    compress.add_argument("--out", help="output directory (default <output_dir>/compress/<name>)")
    compress.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage, e.g. postgresql://user@host/db (default SQLite <out>/study.db)",
    )


def _compress(args: argparse.Namespace) -> int:
    from kdistill.api import compress

    summary = compress(
        _config_path(args), args.budget, overrides=args.overrides, space=args.space, runtime=args.runtime,
        time_limit_s=args.time, max_candidates=args.max_candidates, trials=args.trials, int8=args.int8,
        out=args.out, storage=args.storage, workers=args.workers,
    )  # fmt: skip
    final = summary["final"]
    print(
        f"best student: {final['architecture']} {final['settings']}\n"
        f"test acc {final['test_acc_mean']:.2f} ± {final['test_acc_std']:.2f}% ({len(final['test_acc'])} seeds); "
        + ("within the budget on its ONNX file" if final["meets_budget"] else "MISSES the budget on its ONNX file")
    )
    return 0 if final["meets_budget"] else 1


def _add_compare_command(commands: Subcommands) -> None:
    """compare"""
    compare = commands.add_parser(
        "compare",
        help="compression report: teacher vs student parameters, FLOPs, CPU latency, size, accuracy",
        description="For each distillation run directory, measure its deployable student and its teacher(s) "
        "(parameters, FLOPs per image, CPU latency at batch 1 and throughput at batch 64, file size) next to "
        "test accuracy and agreement from summary.json; print the table and write compression.md/.csv/.json/.png. "
        "Runs sharing a teacher list it once. Relative teacher paths are read from the current directory.",
    )
    compare.add_argument(
        "runs", nargs="+", metavar="RUN", help="distillation run directories (config.yaml, summary.json, student.pt)"
    )
    compare.add_argument(
        "--out", default="compression", metavar="DIR", help="directory for compression.{md,csv,json,png}"
    )
    compare.add_argument(
        "--repeats", type=int, default=30, metavar="N", help="timed calls at batch 1; the median is reported"
    )
    compare.add_argument(
        "--batch-repeats", type=int, default=10, metavar="N", help="timed calls at batch 64 for throughput"
    )
    compare.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch CPU threads while timing (default: torch.get_num_threads(); 1 is steadiest on a shared machine)",
    )


def _compare(args: argparse.Namespace) -> int:
    from kdistill.report.compression import SpeedSettings, compare_runs

    settings = SpeedSettings(repeats=args.repeats, batch_repeats=args.batch_repeats, threads=args.threads)
    report = compare_runs(args.runs, args.out, settings)
    print(report.markdown)
    print(f"\nwritten: {', '.join(str(path) for path in report.files.values())}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from kdistill.report.experiments import CURVES, write_report
    from kdistill.report.features import write_tsne

    by = [key.strip() for key in args.by.split(",") if key.strip()] if args.by else None
    run_dirs = [Path(path) for path in args.runs if (Path(path) / "config.yaml").is_file()]
    if args.tsne and not run_dirs:
        raise ConfigError("--tsne draws one run's features: pass the distillation run directory itself")
    report = write_report(args.runs, by, args.baseline, args.out, not args.no_plots, curves=[*CURVES, *args.plot])
    print(report.markdown)
    files = list(report.files.values())
    for run in run_dirs if args.tsne else []:
        files.append(write_tsne(run, report.files["md"].parent / f"tsne_{run.name}.png", args.tsne)[0].path)
    print(f"\nwritten: {', '.join(str(path) for path in files)}")
    return 0


def _show_batch(args: argparse.Namespace) -> int:
    from kdistill.config import load_config
    from kdistill.report.batches import show_batch

    config = load_config(_config_path(args), args.overrides)
    result = show_batch(config, args.out, args.grid, args.epoch)
    rates = result.lrs
    print(
        f"batch: {result.batch_plot.path} ({min(args.grid**2, len(result.shown.batch))} images of epoch {args.epoch}, "
        f"inputs {tuple(result.shown.batch.inputs.shape)})"
    )
    print(
        f"lr schedule: {result.lr_plot.path} ({len(rates)} steps, {result.shown.steps_per_epoch} per epoch; "
        f"first {rates[0]:.4g}, max {max(rates):.4g}, last {rates[-1]:.4g})"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from kdistill.deploy import export_run

    parity = export_run(args.run, args.format, args.output, args.parity_samples)
    print(f"exported {parity['file']} ({parity['bytes']:,} bytes); metadata {parity['metadata']}")
    print(
        f"parity on {parity['samples']} test images: max abs logit diff {parity['max_abs_diff']:.3g}, "
        f"top-1 agreement {parity['top1_agreement']:.2f}% (accuracy {parity['accuracy_pytorch']:.2f}% PyTorch, "
        f"{parity['accuracy_export']:.2f}% export)"
    )
    return 0


def _list_models(args: argparse.Namespace) -> int:
    from kdistill.models.catalog import model_catalog
    from kdistill.report.tables import markdown_table

    try:
        channels, height, width = (int(v) for v in args.input_shape.split(","))
    except ValueError:
        raise ConfigError(f"--input-shape {args.input_shape!r}: expected C,H,W, e.g. 3,32,32") from None
    shape = (channels, height, width)
    rows = [
        [r["name"], r["family"], f"{r['parameters']:,}", r["source"]] for r in model_catalog(args.num_classes, shape)
    ]
    print(
        markdown_table(
            ["model", "family", f"parameters ({args.num_classes} classes, {args.input_shape})", "source"], rows
        )
    )
    print(
        "\nOutside models: timm:<name> (e.g. timm:resnetv2_50x1_bit) and torchvision:<name> "
        "(e.g. torchvision:resnet18)."
    )
    return 0


def _list_datasets() -> int:
    from kdistill.data import DATASET_INFO
    from kdistill.report.tables import markdown_table

    rows = [[name, info["description"], info["how_to_get"]] for name, info in sorted(DATASET_INFO.items())]
    print(markdown_table(["dataset", "description", "how to get it"], rows))
    return 0


def plain_summary(docstring: str | None) -> str:
    """The first sentence of a docstring without reST markup (``:func:`x``` -> x, ````x```` -> x)."""
    text = " ".join((docstring or "").strip().split("\n\n")[0].split())
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    return text.replace("``", "")


def _list_methods() -> int:
    from kdistill.methods import METHODS
    from kdistill.report.tables import markdown_table

    rows = []
    for name in METHODS.names():
        method = METHODS.get(name)
        defaults = method.config_class()
        options = ", ".join(
            f"{f.name}={getattr(defaults, f.name)!r}" for f in dataclasses.fields(defaults) if f.name != "name"
        )
        kind = f"{method.traits.kind}, {method.traits.training}"
        rows.append([name, kind, plain_summary(method.__doc__), options or "-"])
    print(markdown_table(["method", "kind", "what it does", "options (defaults)"], rows))
    return 0


def _cache_teacher(args: argparse.Namespace) -> int:
    from kdistill import api
    from kdistill.config import load_config

    print(json.dumps(api.cache_teacher(load_config(_config_path(args), args.overrides)), indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from kdistill import api

    print(json.dumps(api.evaluate_checkpoint(args.checkpoint, args.split, args.overrides, args.device), indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from kdistill import api

    api.demo(
        args.output_dir,
        args.trials,
        args.teacher_epochs,
        args.student_epochs,
        args.temperature,
        args.kd_weight,
        args.train_subset,
        args.overrides,
        few_labels=FewLabels(labelled=args.labelled) if args.labelled > 0 else None,
    )
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": _run,
    "distill": _run,
    "cache-teacher": _cache_teacher,
    "compress": _compress,
    "sweep": _sweep,
    "tune": _tune,
    "eval": _evaluate,
    "export": _export,
    "demo": _demo,
    "report": _report,
    "show-batch": _show_batch,
    "compare": _compare,
    "models": _list_models,
    "datasets": lambda _: _list_datasets(),
    "methods": lambda _: _list_methods(),
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    try:
        return COMMANDS[args.command](args)
    except TrainingInterrupted as stopped:
        command = " ".join(["kdistill", *(argv if argv is not None else sys.argv[1:])])
        resume = command if "--resume" in command else f"{command} --resume"
        hint = f"\nresume with: {resume}" if args.command in ("train", "distill") else ""
        if args.command in ("sweep", "tune", "compress"):
            hint = f"\ncontinue with the same command: {command}"
        print(f"kdistill {args.command}: {stopped}{hint}", file=sys.stderr)
        return 128 + stopped.signal_number
    except (ConfigError, CheckpointError, DatasetNotFoundError, TrainingDivergedError, DiskFullError) as error:
        print(f"kdistill {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"kdistill {args.command}: interrupted; `--resume` continues from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
