"""`kdistill demo` end to end on a small slice of real Fashion-MNIST, and the CLI surface."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdistill import api
from kdistill.cli import main
from kdistill.config import load_config, to_dict

CONFIGS = Path(__file__).parent.parent / "configs" / "fashion_mnist"


def test_demo_prints_both_settings_with_their_gains(tmp_path):
    result = api.demo(
        output_dir=str(tmp_path),
        trials=2,
        teacher_epochs=1,
        student_epochs=1,
        train_subset=3000,
        overrides=["train.progress=false", "data.test_subset=2000"],  # 2,000 val and test images: enough for > 40%
        log=lambda _: None,
        few_labels=api.FewLabels(labelled=200, alone_epochs=6),  # 200 images: 2 steps an epoch
    )
    table = result["table"]
    assert "teacher CNN" in table and "student MLP + KD" in table and "| 200 labels " in table
    rows = {line.split("|")[2].strip(): line for line in table.splitlines()[2:]}
    assert list(rows)[3:] == [
        "student MLP alone (200 images)", "+ soft targets, the same 200 images",
        "+ teacher's hard labels, unlabelled images", "+ teacher's soft targets, unlabelled images",
    ]  # fmt: skip
    by_arm = dict(zip(list(rows)[4:], ("kd_same", "pseudo_few", "kd_few")))
    for row, arm in by_arm.items():  # every distilled arm: its difference to the student alone, with its s.e.
        mean = sum(s["final_test_acc"] for s in result[arm]) / 2
        alone = sum(s["final_test_acc"] for s in result["alone_few"]) / 2
        assert rows[row].split("|")[7].strip().startswith(f"{mean - alone:+.2f} ± ")
    assert rows["+ teacher's soft targets, unlabelled images"].split("|")[8].count("±") == 1  # vs the row above
    arms = ("alone", "kd", "alone_few", "kd_same", "pseudo_few", "kd_few")
    assert all(len(result[arm]) == 2 for arm in arms)
    assert all(s["final_test_acc"] > 40 for arm in arms for s in result[arm])  # chance is 10%
    # the few-labels arms: the student alone saw 200 images, the distilled one all 3000 (200 of them labelled)
    # the teacher was paid once for these 3000 images: the few-labels runs read its logits from the store
    assert all(s["teacher_store_misses"] == 0 and s["teacher_store_hits"] == 3 for s in result["kd_few"])
    assert all(s["method"] == "kd" and s["teacher_store_misses"] == 0 for s in result["pseudo_few"])
    assert "hard_labels: true" in (tmp_path / "few_labels_mlp_pseudo-seed0" / "config.yaml").read_text()
    lines = (tmp_path / "few_labels_mlp_pseudo-seed0" / "metrics.jsonl").read_text()
    assert '"train_kd"' in lines and '"train_ce"' in lines
    lines = (tmp_path / "few_labels_mlp_kd-seed0" / "metrics.jsonl").read_text()
    assert '"train_kd"' in lines and '"train_ce"' in lines
    assert (tmp_path / "demo.md").read_text().startswith("| setting")
    assert (tmp_path / "demo_test_acc.png").stat().st_size > 1000
    assert (tmp_path / "few_labels_mlp_kd-seed1" / "student.pt").is_file()


@pytest.mark.parametrize(
    "file, name, student, method",
    [
        ("ce_cnn.yaml", "teacher", api.DEMO_TEACHER, None),
        ("ce_mlp.yaml", "baseline", api.DEMO_STUDENT, None),
        ("kd_cnn_mlp.yaml", "kd", api.DEMO_STUDENT, "kd"),
    ],
)
def test_shipped_fashion_mnist_configs_match_the_demo(file, name, student, method):
    shipped = load_config(CONFIGS / file)
    assert to_dict(shipped)["student"] == to_dict(load_config(base={"student": student}))["student"]
    demo_base = load_config(base=api.DEMO_BASE)
    assert to_dict(shipped)["optim"] == to_dict(demo_base)["optim"]
    assert to_dict(shipped)["schedule"] == to_dict(demo_base)["schedule"]
    if method:
        assert shipped.method.name == method and shipped.method.temperature == 10.0


def test_cli_help_and_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("train", "distill", "eval", "demo", "report"))
    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    assert "--resume" in capsys.readouterr().out
    assert main(["train", "--set", "train.epochz=1"]) == 2
    assert "valid keys of train" in capsys.readouterr().err
    assert main(["distill", "--set", "student.name=mlp", "--set", "method.name=kd", "--set", "data.name=digits"]) == 2
    assert "teacher" in capsys.readouterr().err


def test_cli_train_distill_eval_report_on_digits(tmp_path, capsys):
    common = [
        "--set",
        f"output_dir={tmp_path}",
        "--set",
        "data.name=digits",
        "--set",
        "train.epochs=2",
        "--set",
        "train.progress=false",
    ]
    assert (
        main(
            [
                "train",
                *common,
                "--set",
                "name=t",
                "--set",
                "student.name=cnn",
                "--set",
                "student.kwargs={channels: [8, 16], hidden: 32, padding: 1}",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "distill",
                *common,
                "--set",
                "name=s",
                "--set",
                "student.name=mlp",
                "--set",
                "method.name=kd",
                "--set",
                f"teacher.checkpoint={tmp_path / 't'}",
                "--trials",
                "2",
            ]
        )
        == 0
    )
    assert "±" in capsys.readouterr().out  # the trials table
    assert main(["eval", str(tmp_path / "s-seed1"), "--split", "val"]) == 0
    assert '"split": "val"' in capsys.readouterr().out
    report_args = [str(tmp_path / "s-seed0"), str(tmp_path / "s-seed1"), "--plot", "val_acc"]
    assert main(["report", *report_args, "--out", str(tmp_path / "report")]) == 0
    assert "| s " in capsys.readouterr().out and (tmp_path / "report" / "val_acc.png").is_file()
    assert main(["datasets"]) == 0 and "fashion_mnist" in capsys.readouterr().out
    assert main(["methods"]) == 0 and "temperature=4.0" in capsys.readouterr().out
