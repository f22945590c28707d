"""`kdistill export`: TorchScript, ONNX and safetensors artifacts of real digits runs, with parity checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from kdistill.cli import main
from kdistill.config import load_config
from kdistill.contracts import CheckpointError, ConfigError, DatasetNotFoundError
from kdistill.data import build_data, data_info
from kdistill.deploy import FORMATS, export_run, load_safetensors_student
from kdistill.engine.builders import build_method, load_method_state
from kdistill.engine.export import load_student
from kdistill.engine.loop import fit
from kdistill.models.loading import read_checkpoint
from kdistill.runtime.io import atomic_save

from helpers import digits_config

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.load` is deprecated:FutureWarning")
onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

DIGITS_MEAN, DIGITS_STD = [0.3059], [0.3753]  # kdistill.data.mnist_like's digits preset


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    summary = fit(digits_config(tmp_path_factory.mktemp("export"), "mlp", "train.epochs=2"), log=lambda _: None)
    return Path(summary["run_dir"])


def _first_test_images(run: Path, count: int) -> torch.Tensor:
    config = load_config(base=read_checkpoint(run / "student.pt")["config"])
    test = build_data(config.data, config.seed).test
    return torch.stack([test[i][0] for i in range(count)])  # (N, 1, 8, 8)


def _run_artifact(fmt: str, path: Path, images: torch.Tensor) -> torch.Tensor:
    """The artifact's logits, loaded the way a deployment loads it (no kdistill code for TorchScript / ONNX)."""
    if fmt == "torchscript":
        return torch.jit.load(str(path))(images)
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(["logits"], {"input": images.numpy()})[0])
    return load_safetensors_student(path)(images)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_export_writes_the_artifact_metadata_and_a_passing_parity_check(digits_run, fmt):
    parity = export_run(digits_run, fmt)
    artifact = digits_run / "export" / f"student{FORMATS[fmt]}"
    assert Path(parity["file"]) == artifact and artifact.stat().st_size == parity["bytes"] > 0
    assert parity["samples"] == 256 and parity["max_abs_diff"] < 1e-4 and parity["top1_agreement"] == 100.0
    assert parity["accuracy_export"] == parity["accuracy_pytorch"] > 50.0  # a trained student, not noise
    assert json.loads((digits_run / "export" / f"parity_{fmt}.json").read_text()) == parity
    metadata = json.loads((digits_run / "export" / "student.json").read_text())
    assert metadata["method"] == "ce" and metadata["num_classes"] == 10 and metadata["input_shape"] == [1, 8, 8]
    assert metadata["input_mean"] == DIGITS_MEAN and metadata["input_std"] == DIGITS_STD
    assert metadata["source_run"] == str(digits_run.resolve()) and metadata["kdistill_version"]
    assert metadata["exports"][fmt]["file"] == artifact.name and metadata["exports"][fmt]["format"] == fmt
    assert not list((digits_run / "export").glob(".*.tmp"))  # no temp files left behind

    images = _first_test_images(digits_run, 5)  # an odd batch: the ONNX batch axis is dynamic
    student, _, _ = load_student(digits_run / "student.pt")
    with torch.no_grad():
        torch.testing.assert_close(_run_artifact(fmt, artifact, images), student(images), atol=1e-4, rtol=1e-4)


def test_metadata_travels_inside_each_artifact(digits_run):
    for fmt in FORMATS:
        if not (digits_run / "export" / f"student{FORMATS[fmt]}").exists():
            export_run(digits_run, fmt, parity_samples=8)
    extra = {"kdistill.json": ""}
    torch.jit.load(str(digits_run / "export" / "student.pt"), _extra_files=extra)
    assert json.loads(extra["kdistill.json"])["input_mean"] == DIGITS_MEAN

    onnx_model = onnx.load(str(digits_run / "export" / "student.onnx"))
    props = {p.key: p.value for p in onnx_model.metadata_props}
    assert json.loads(props["kdistill"])["num_classes"] == 10
    with safe_open(str(digits_run / "export" / "student.safetensors"), framework="pt") as handle:
        header = json.loads(handle.metadata()["kdistill"])
    assert header["format"] == "safetensors" and header["input_std"] == DIGITS_STD
    assert set(json.loads((digits_run / "export" / "student.json").read_text())["exports"]) == set(FORMATS)


def test_output_path_and_cli(digits_run, tmp_path, capsys):
    target = tmp_path / "deploy" / "digits.safetensors"
    code = main(
        ["export", str(digits_run), "--format", "safetensors", "--output", str(target), "--parity-samples", "32"]
    )
    assert code == 0 and target.is_file() and (tmp_path / "deploy" / "digits.json").is_file()
    printed = capsys.readouterr().out
    assert "max abs logit diff" in printed and "top-1 agreement 100.00%" in printed and str(target) in printed
    assert json.loads((digits_run / "export" / "parity_safetensors.json").read_text())["samples"] == 32
    with pytest.raises(SystemExit):
        main(["export", str(digits_run), "--format", "tflite"])  # argparse lists the valid choices


def test_simkd_export_is_encoder_projector_and_teacher_head(tmp_path, digits_teacher):
    config = digits_config(
        tmp_path,
        "simkd",
        "method.name=simkd",
        f"teacher.checkpoint={digits_teacher}",
        "student.name=cnn",
        "student.kwargs={channels: [8, 16], hidden: 32, padding: 1}",
        "train.epochs=1",
    )
    run = Path(fit(config, log=lambda _: None)["run_dir"])
    parity = export_run(run, "safetensors", parity_samples=64)
    assert parity["max_abs_diff"] < 1e-4 and parity["top1_agreement"] == 100.0
    keys = load_file(str(run / "export" / "student.safetensors")).keys()
    assert {key.split(".")[0] for key in keys} == {"student", "projectors", "heads"}

    checkpoint = read_checkpoint(run / "last.pt")  # the trained method: student, projector, frozen teacher
    run_config = load_config(base=checkpoint["config"])
    data = build_data(run_config.data, run_config.seed)
    method = build_method(run_config, data_info(data, run_config.data.batch_size))
    load_method_state(method, checkpoint["method_state"])
    images = _first_test_images(run, 16)
    with torch.no_grad():
        expected = method.eval()(images)  # SimKD's forward: encoder -> projector -> teacher classifier
        torch.testing.assert_close(load_safetensors_student(run / "export" / "student.safetensors")(images), expected)


def test_bad_format_missing_student_and_missing_dataset_are_clear_errors(digits_run, tmp_path, capsys):
    with pytest.raises(ConfigError, match="'tflite' is not supported; choose one of torchscript, onnx, safetensors"):
        export_run(digits_run, "tflite")
    with pytest.raises(ConfigError, match="parity_samples must be at least 1"):
        export_run(digits_run, "onnx", parity_samples=0)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    with pytest.raises(CheckpointError, match="has no student.pt: it is written when a run finishes"):
        export_run(unfinished, "torchscript")
    assert main(["export", str(unfinished), "--format", "onnx"]) == 2
    assert "has no student.pt" in capsys.readouterr().err

    payload = read_checkpoint(digits_run / "student.pt")  # the same student, its dataset gone
    payload["config"]["data"].update(name="cifar10", root=str(tmp_path / "no-cifar"))
    moved = tmp_path / "moved"
    atomic_save(payload, moved / "student.pt")
    with pytest.raises(DatasetNotFoundError, match="parity check runs the export on test images .*cifar10"):
        export_run(moved, "safetensors")
    assert not (moved / "export" / "student.safetensors").exists()


@pytest.mark.parametrize("dataset", ["digits", "imagefolder"])
def test_data_records_the_normalisation_its_transforms_applied(dataset, tmp_path):
    overrides = [f"data.name={dataset}"]
    if dataset == "imagefolder":
        for split in ("train", "val"):
            for label, colour in (("red", (200, 10, 10)), ("blue", (10, 10, 200))):
                (tmp_path / split / label).mkdir(parents=True)
                for i in range(3):
                    Image.new("RGB", (20, 20), colour).save(tmp_path / split / label / f"{i}.png")
        overrides += [f"data.root={tmp_path}", "data.image_size=16", "data.augment=none"]
    data = build_data(load_config(overrides=overrides).data, seed=0)
    assert data.mean is not None and data.std is not None
    pixels = torch.stack([data.test[i][0] for i in range(len(data.test))])  # (N, C, H, W)
    mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    raw = pixels * std + mean  # undoing the recorded normalisation gives pixels in [0, 1] again
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5 and raw.max() > 0.5
    if dataset == "imagefolder":
        assert data.mean == (0.485, 0.456, 0.406)
        torch.testing.assert_close(raw[0, :, 8, 8], torch.tensor([10, 10, 200]) / 255.0, atol=1e-3, rtol=0)
