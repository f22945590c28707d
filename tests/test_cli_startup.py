"""A quick command line: ``kdistill --help`` and ``kdistill <command> --help`` answer without importing torch (the
parser's choices and defaults come from torch-free modules), and a command still imports what it needs when it runs.
Wall time is measured, not asserted (docs/speed.md), so a loaded machine cannot fail these tests."""

from __future__ import annotations

import json
import subprocess
import sys

from kdistill.cli import main

HEAVY = ("torch", "torchvision", "numpy", "optuna", "matplotlib", "sklearn")

# Runs in a fresh interpreter: import the package and the CLI, build the parser, ask every command for its help,
# then report the heavy modules that were imported and each --help's exit status.
PROBE = """
import contextlib, io, json, sys
import kdistill
from kdistill import cli
parser = cli.build_parser()
commands = sorted(cli.COMMANDS)
codes = {}
for argv in [["--help"], *([command, "--help"] for command in commands)]:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.main(argv)
        except SystemExit as stop:
            codes[" ".join(argv)] = stop.code
print(json.dumps({"version": kdistill.__version__, "commands": commands, "codes": codes,
                  "heavy": [name for name in sys.argv[1:] if name in sys.modules]}))
"""


def run_kdistill(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kdistill.cli", *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_help_of_every_command_imports_no_torch():
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, *HEAVY], capture_output=True, text=True, timeout=300, check=True
    )
    result = json.loads(probe.stdout)
    assert result["heavy"] == [], f"importing the CLI and asking for help imported {result['heavy']}"
    assert {"train", "distill", "sweep", "export", "demo", "methods"} <= set(result["commands"])
    assert result["codes"] == {
        " ".join(argv): 0 for argv in [["--help"], *([command, "--help"] for command in result["commands"])]
    }
    assert result["version"].count(".") == 2


def test_kdistill_help_prints_the_usage_and_the_commands():
    finished = run_kdistill("--help")
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.startswith("usage: kdistill")
    assert "distill" in finished.stdout and "Knowledge distillation" in finished.stdout


def test_a_command_help_shows_the_defaults_it_takes_from_the_torch_free_module():
    from kdistill.choices import EXPORT_FORMATS, SWEEP_OBJECTIVES, FewLabels
    from kdistill.deploy import FORMATS
    from kdistill.sweep.run import OBJECTIVES

    assert FORMATS is EXPORT_FORMATS and OBJECTIVES is SWEEP_OBJECTIVES  # one source of truth
    export = run_kdistill("export", "--help")
    assert export.returncode == 0 and "{" + ",".join(EXPORT_FORMATS) + "}" in export.stdout
    demo = run_kdistill("demo", "--help")
    assert demo.returncode == 0 and f"(default {FewLabels.labelled};" in " ".join(demo.stdout.split())


def test_a_command_that_needs_torch_still_runs_through_main(capsys):
    # in this process: the fresh-interpreter probe above is what checks the imports; this checks the command works
    assert main(["methods"]) == 0
    methods = capsys.readouterr().out
    assert "| kd " in methods and "temperature=4.0" in methods
    assert main(["datasets"]) == 0
    assert "fashion_mnist" in capsys.readouterr().out


def test_errors_are_still_reported_with_exit_status_2(capsys):
    assert main(["train", "--set", "train.epochz=1"]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("kdistill train: error:") and "epochz" in stderr
