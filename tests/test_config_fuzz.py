"""Property-based: thousands of random configs and overrides thrown at the validator and the CLI never give a
traceback, and nothing the validator accepts holds an out-of-range value (issue 13, item 8); random options of every
zoo model and random output paths are refused by name or pass, and what passes builds and can be written (issue 26)."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import math
import os
import typing
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kdistill.cli import main
from kdistill.config import Config, load_config
from kdistill.contracts import ConfigError
from kdistill.engine.builders import preflight
from kdistill.methods import METHODS
from kdistill.models import MODELS, build_model

SECTIONS = {"data", "optim", "schedule", "train", "track"}


def schema_keys() -> list[str]:
    """Every dotted key of the schema (the sections, the student, and each method's options)."""
    keys = ["name", "seed", "output_dir"]
    hints = typing.get_type_hints(Config)
    for section in SECTIONS:
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(hints[section])]
    keys += [f"student.{f}" for f in ("name", "kwargs", "checkpoint")]
    for name in METHODS.names():
        keys += [f"method.{f.name}" for f in dataclasses.fields(METHODS.get(name).config_class) if f.name != "name"]
    return sorted(set(keys))


KEYS = schema_keys()
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 2, 0.0, -0.5, 1e-12, 1e12, 2**63]),
)
VALUES = st.one_of(
    NUMBERS,
    st.booleans(),
    st.none(),
    st.text(max_size=12),
    st.sampled_from(["", "cpu", "cuda:7", "kd", "ce", "step", "sgd", "adamw", "../x", "/abs", "nan", "skip"]),
    st.lists(NUMBERS, max_size=3),
    st.dictionaries(st.sampled_from(["hidden", "channels", "bogus"]), NUMBERS, max_size=2),
)
BASE = {"student": {"name": "mlp"}, "data": {"name": "digits"}, "train": {"progress": False}}


def nested(overrides: dict[str, object]) -> dict:
    data: dict = yaml.safe_load(yaml.safe_dump(BASE))
    for key, value in overrides.items():
        node = data
        *parents, last = key.split(".")
        for parent in parents:
            node = node.setdefault(parent, {}) if isinstance(node.get(parent, {}), dict) else {}
        node[last] = value
    return data


def finite_and_in_range(config: Config) -> None:
    """What every config the validator accepts must satisfy (the invariants the trainer relies on)."""
    assert config.data.batch_size >= 1 and config.data.eval_batch_size >= 1 and config.data.num_workers >= 0
    assert config.data.image_size is None or config.data.image_size >= 1
    assert config.data.val_size is None or config.data.val_size >= 0
    assert math.isfinite(config.optim.lr) and config.optim.lr > 0 and 0 <= config.optim.momentum < 1
    assert math.isfinite(config.optim.weight_decay) and config.optim.weight_decay >= 0
    assert config.optim.clip_grad_norm is None or (
        math.isfinite(config.optim.clip_grad_norm) and config.optim.clip_grad_norm > 0
    )
    assert all(0 <= b < 1 for b in config.optim.betas) and len(config.optim.betas) == 2
    schedule = config.schedule
    assert math.isfinite(schedule.warmup_epochs) and schedule.warmup_epochs >= 0 and schedule.warmup_steps >= 0
    assert (
        math.isfinite(schedule.min_lr) and schedule.min_lr >= 0 and math.isfinite(schedule.gamma) and schedule.gamma > 0
    )
    train = config.train
    assert train.epochs >= 1 and train.eval_every >= 1 and train.checkpoint_every >= 1
    assert train.max_steps_per_epoch is None or train.max_steps_per_epoch >= 1
    assert 0 <= config.seed < 2**40 and config.name and "/" not in config.name
    for field in dataclasses.fields(config.method):
        value = getattr(config.method, field.name)
        if isinstance(value, float):
            assert math.isfinite(value), field.name
            if "weight" in field.name:
                assert value >= 0, field.name
            if "temperature" in field.name:
                assert value > 0, field.name


@settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, min_size=1, max_size=4))
def test_random_configs_are_rejected_cleanly_or_valid(overrides):
    try:
        config = preflight(load_config(base=nested(overrides)))
    except ConfigError:
        return  # a clean, explained refusal
    finite_and_in_range(config)


OVERRIDE_TEXT = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), st.text(max_size=10)),
    st.builds(lambda k, v: f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}", st.sampled_from(KEYS), VALUES),
    st.text(max_size=20),
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(overrides=st.lists(OVERRIDE_TEXT, min_size=1, max_size=3))
@example(overrides=["student.kwargs=?"])  # YAML's {None: None}: once a TypeError from the model builder
def test_the_cli_never_gives_a_traceback_on_random_overrides(overrides):
    arguments = ["train", "--set", "student.name=mlp", "--set", "data.name=digits", "--print-config"]
    for text in overrides:
        arguments += ["--set", text]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(arguments)  # any exception other than SystemExit fails the test with its traceback
        except SystemExit as exit_:  # argparse refuses malformed arguments itself (exit 2, usage message)
            code = exit_.code
    assert code in (0, 2), err.getvalue()
    if code == 0:  # accepted: the printed config is itself valid
        finite_and_in_range(preflight(load_config(base=yaml.safe_load(out.getvalue()))))


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.batch_size=0", "data.batch_size=0 must be >= 1"),
        ("optim.momentum=2", "optim.momentum=2.0 must be in [0, 1)"),
        ("optim.betas=[0.9, 1.5]", "optim.betas"),
        ("optim.nesterov=true", None),  # valid with the default momentum 0.9
        ("optim.name=adam", None),
        ("train.epochs=0", "train.epochs=0 must be >= 1"),
        ("train.checkpoint_every=0", "train.checkpoint_every=0 must be >= 1"),
        ("train.max_steps_per_epoch=0", "train.max_steps_per_epoch=0 must be >= 1"),
        ("schedule.warmup_epochs=.nan", "schedule.warmup_epochs=nan"),
        ("data.val_size=-1", "data.val_size=-1 must be >= 0"),
        ("data.image_size=0", "data.image_size=0 must be >= 1"),
        ("train.device=tpu", "train.device='tpu'"),
        ("seed=99999999999999999999", "seed="),
        ("track.mlflow=true", None),
    ],
)
def test_known_bad_values_are_named(override, message):
    config = load_config(base=BASE, overrides=[override])
    if message is None:
        preflight(config)
        return
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        preflight(config)


@pytest.mark.parametrize("override", ["student.kwargs=?", "student.kwargs={1: 8}"])
def test_builder_options_must_be_named(override):
    with pytest.raises(ConfigError, match=r"student.kwargs \(a key\): expected a string, got (None|1)"):
        load_config(base=BASE, overrides=[override])


def test_every_problem_is_reported_at_once():
    config = load_config(
        base=BASE, overrides=["optim.lr=-1", "train.epochs=0", "method.name=kd", "method.temperature=-2"]
    )
    with pytest.raises(ConfigError) as error:
        preflight(config)
    text = str(error.value)
    for part in ("optim.lr=-1.0", "train.epochs=0", "method.temperature=-2.0", "distils from a teacher"):
        assert part in text
    assert text.startswith("4 problem(s)")


def test_both_kd_weights_zero_and_silently_dropped_teacher_kwargs_are_refused(tmp_path):
    config = load_config(
        base=BASE,
        overrides=[
            "method.name=kd", "method.ce_weight=0", "method.kd_weight=0", f"teacher.checkpoint={tmp_path}",
            "teacher.kwargs={hidden: [8]}",
        ],
    )  # fmt: skip
    with pytest.raises(ConfigError) as error:
        preflight(config)
    assert "ce_weight and kd_weight are all 0" in str(error.value)
    assert "teacher.kwargs={'hidden': [8]} would be ignored" in str(error.value)


def test_an_invalid_config_stops_before_data_or_models_are_built(tmp_path, monkeypatch):
    from kdistill.engine import loop

    def must_not_run(*args, **kwargs):
        raise AssertionError("data was built for an invalid config")

    monkeypatch.setattr(loop, "build_data", must_not_run)
    config = load_config(base=BASE, overrides=["train.epochs=0", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="train.epochs=0"):
        loop.fit(config, log=lambda _: None)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content", [b"train: {epochs: [", b"\xff\xfe\x00binary\x00", b"- just\n- a list\n"])
def test_broken_yaml_files_give_a_clean_error(tmp_path, content, capsys):
    path = tmp_path / "broken.yaml"
    path.write_bytes(content)
    assert main(["train", "--config", str(path), "--print-config"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_negative_trials_are_refused_by_the_cli():
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--trials", "-2", "--set", "student.name=mlp"])
    assert exit_.value.code == 2


# ----------------------------------------------------------------------------- model options and output paths (26)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SIZES = st.one_of(
    st.integers(min_value=-3, max_value=40),
    st.sampled_from([0, -1, -5, 2**31, 2**63, 2**70]),
)
OPTION_VALUES = st.one_of(
    SIZES,
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 0.5, 1.0, 1.5, -0.5]),
    st.booleans(),
    st.none(),
    st.sampled_from(["", "big", "avg", "flatten", "64"]),
    st.lists(SIZES, max_size=3),
    st.lists(st.one_of(st.booleans(), st.text(max_size=2), st.floats()), min_size=1, max_size=2),
    st.dictionaries(st.sampled_from(["a", "hidden"]), SIZES, max_size=1),
)


def option_names(model: str) -> list[str]:
    """The options zoo ``model`` takes, and names it does not."""
    taken = [n for n in inspect.signature(MODELS.get(model)).parameters if n not in ("num_classes", "input_shape")]
    return taken + ["width", "bogus", "num_classes"]


@st.composite
def model_options(draw) -> tuple[str, dict]:
    model = draw(st.sampled_from(MODELS.names()))
    kwargs = draw(st.dictionaries(st.sampled_from(option_names(model)), OPTION_VALUES, max_size=3))
    return model, kwargs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_options(), st.sampled_from(["student", "teacher"]))
def test_random_model_options_are_refused_by_name_or_build(model_and_kwargs, role):
    model, kwargs = model_and_kwargs
    method = ["method.name=kd", "teacher.name=mlp"] if role == "teacher" else []  # kd takes a teacher
    config = load_config(base=BASE, overrides=[*method, f"{role}.name={model}"])
    config = dataclasses.replace(config, **{role: dataclasses.replace(getattr(config, role), kwargs=kwargs)})
    try:
        preflight(config)
    except ConfigError as error:
        assert f"{role}.kwargs" in str(error)
        return
    with torch.device("meta"):  # accepted: the run's own build, at the data's real size, is clean too
        try:
            build_model(getattr(config, role), 10, (1, 8, 8), role)
        except ConfigError as error:
            assert f"{role}.kwargs" in str(error)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A directory holding a regular file (``file``) and a directory (``dir``)."""
    root = tmp_path_factory.mktemp("paths")
    (root / "file").write_text("not a directory")
    (root / "dir").mkdir()
    return root


PATH_PARTS = st.lists(st.sampled_from(["a", "b", "deep", "x" * 300, "run.d", "..", "."]), max_size=4)
PATH_BASES = st.sampled_from(["{scratch}", "{scratch}/file", "{scratch}/dir", "/proc", "/proc/kdistill_x", "/sys"])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=PATH_BASES, parts=PATH_PARTS, name=st.sampled_from(["run", "file", "dir"]))
# found by this test: ".." through missing directories to the file; ".." out of a file; ".." out of a directory
# /proc refuses to make (the last two lead lexically to /run and /tmp-like writable places, mkdir -p fails)
@example(base="{scratch}", parts=["b", "deep", "..", ".."], name="file")
@example(base="{scratch}/file", parts=[".."], name="run")
@example(base="/proc/kdistill_x", parts=["..", ".."], name="run")
def test_random_output_paths_are_refused_by_name_or_writable(scratch, base, parts, name):
    output_dir = os.path.join(base.format(scratch=scratch), *parts)
    before = sorted(p.name for p in scratch.rglob("*"))
    config = load_config(base=BASE, overrides=[f"name={name}"])
    config = dataclasses.replace(config, output_dir=output_dir)
    try:
        preflight(config)
        accepted = True
    except ConfigError as error:
        assert "output_dir=" in str(error), error
        accepted = False
    assert sorted(p.name for p in scratch.rglob("*")) == before  # the check left nothing behind
    if accepted:  # what the check accepts the run can make: the run directory and a file in it
        run = Path(output_dir) / name
        run.mkdir(parents=True, exist_ok=True)
        (run / "probe").write_text("")
        (run / "probe").unlink()


def cli_error(capsys, *overrides: str) -> str:
    """What ``kdistill train`` on the Fashion-MNIST CNN config prints with ``overrides``; it must end with exit 2."""
    arguments = ["train", "--config", str(CONFIGS / "fashion_mnist" / "ce_cnn.yaml"), "--print-config"]
    for text in (*overrides, "train.epochs=1", "data.train_subset=512"):
        arguments += ["--set", text]
    assert main(arguments) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("kdistill train: error: ")
    return err


def test_a_negative_width_is_named_not_a_torch_traceback(capsys):
    err = cli_error(capsys, "student.kwargs={hidden: [-5]}")
    assert "student.kwargs.hidden=[-5]: expected an integer >= 0 (the default is 1024)" in err


def test_an_output_dir_that_cannot_be_made_is_named(capsys, tmp_path):
    err = cli_error(capsys, "output_dir=/proc/kdistill_x")
    assert "output_dir='/proc/kdistill_x' cannot be written: /proc refuses new entries" in err
    (tmp_path / "file").write_text("")
    err = cli_error(capsys, f"output_dir={tmp_path}/file/runs")
    assert f"{tmp_path}/file is a file, not a directory" in err
    assert not Path("/proc/kdistill_x").exists()


def test_every_problem_is_listed_with_the_model_and_path_ones(tmp_path):
    (tmp_path / "file").write_text("")
    overrides = ["student.kwargs={hidden: [0], bogus: 1}", f"output_dir={tmp_path}/file", "train.epochs=0"]
    with pytest.raises(ConfigError) as error:
        preflight(load_config(base=BASE, overrides=overrides))
    text = str(error.value)
    assert text.startswith("2 problem(s)") is False and text.startswith("3 problem(s)"), text
    for part in ("unknown option(s) bogus", "hidden=[0]: expected a list of integers >= 1", "is a file", "epochs=0"):
        assert part in text


def test_switching_a_nesterov_config_to_adam_just_works(capsys):
    path = CONFIGS / "fashion_mnist" / "ce_cnn.yaml"
    assert load_config(path).optim.nesterov  # the config is written for Nesterov SGD
    arguments = ["train", "--config", str(path), "--print-config", "--set", "optim.name=adam"]
    assert main(arguments) == 0
    optim = yaml.safe_load(capsys.readouterr().out)["optim"]
    assert optim["name"] == "adam" and optim["nesterov"] is False  # the resolved config records what Adam runs with
