"""Export a finished run's deployable student to TorchScript, ONNX or safetensors, and check parity.

:func:`export_run` loads ``<run>/student.pt`` (``method.student_for_export()``: for SimKD the encoder +
projector + the reused teacher classifier), writes one artifact to ``<run>/export/`` and its metadata
next to it, then runs the PyTorch student and the artifact (loaded back the way a deployment would
load it) on the first test images of the run's dataset and records how far their logits differ.

- ``torchscript``: ``student.pt`` from ``torch.jit.trace`` (TorchScript is deprecated in recent torch;
  prefer ONNX or safetensors), metadata also in its ``kdistill.json`` extra file;
- ``onnx``: ``student.onnx`` from the ``torch.export``-based exporter (``dynamo=True``, needs
  onnxscript), input ``input`` (batch, C, H, W) with a dynamic batch axis, output ``logits``; checked
  with an onnxruntime CPU session; metadata also in the model's ``metadata_props``;
- ``safetensors``: ``student.safetensors``, the state dict plus, in its header, the metadata and what
  rebuilding the architecture needs (:func:`load_safetensors_student`).

``student.json`` (``<artifact stem>.json``) describes the student (method, classes, input shape and
normalisation, kdistill version, source run) and lists each exported format under ``exports``;
``parity_<format>.json`` holds the parity check. Every file is written atomically (temp + rename).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import Dataset

from kdistill.choices import EXPORT_FORMATS
from kdistill.config import Config, to_dict
from kdistill.contracts import VERSION, CheckpointError, ConfigError, DataInfo, DatasetNotFoundError
from kdistill.data import Data, build_data, make_loader
from kdistill.engine.export import load_student, student_from_payload
from kdistill.models.loading import STUDENT_KIND
from kdistill.runtime.io import atomic_write_text

FORMATS = EXPORT_FORMATS  # format -> file suffix (in kdistill.choices: `kdistill export --help` lists them)
PARITY_BATCH = 64  # the artifacts are run batch by batch (the ONNX batch axis is dynamic)
Runner = Callable[[Tensor], Tensor]  # (B, C, H, W) normalised inputs -> (B, K) logits


def export_run(
    run_dir: str | Path, fmt: str, output: str | Path | None = None, parity_samples: int = 256
) -> dict[str, Any]:
    """Export ``<run_dir>/student.pt`` as ``fmt`` (torchscript | onnx | safetensors); returns the parity check.
    ``run_dir`` may also name one export file of a run, e.g. ``<run>/peer2.pt`` of a mutual-learning run (the
    artifact is then ``export/peer2.<ext>``, its parity check ``export/parity_peer2_<fmt>.json``).

    ``output`` replaces the default ``<run_dir>/export/student.<ext>``; the metadata goes next to it as
    ``<stem>.json``. The parity check (``<run_dir>/export/parity_<fmt>.json``) compares the artifact's logits
    with the PyTorch student's on the first ``parity_samples`` test images of the run's dataset.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r} is not supported; choose one of {', '.join(FORMATS)}")
    if parity_samples < 1:
        raise ConfigError(f"parity_samples must be at least 1, got {parity_samples}")
    run, student_path = _locate_student(Path(run_dir))
    module, config, info = load_student(student_path)
    data = _run_data(config)
    images, targets = _test_images(data, parity_samples)  # (N, C, H, W), (N,)
    stem = student_path.stem  # "student", or another deployed network of the run ("peer2")
    artifact = Path(output) if output is not None else run / "export" / f"{stem}{FORMATS[fmt]}"
    if artifact.resolve() == student_path.resolve():
        raise ConfigError(f"--output {artifact} is the run's own student.pt; choose another path")
    metadata = _metadata(config, info, data, run, student_path)
    example = images[[0, min(1, len(images) - 1)]]  # (2, C, H, W): a batch of 2 keeps the batch axis symbolic
    WRITERS[fmt](module, example, artifact, metadata, config, info)
    exported = READERS[fmt](artifact)
    parity = {
        "format": fmt,
        "file": str(artifact),
        "bytes": artifact.stat().st_size,
        **parity_check(module, exported, images, targets),
        "source_run": str(run),
    }
    metadata_path = artifact.with_suffix(".json")
    _write_metadata(metadata_path, metadata, fmt, artifact)
    parity["metadata"] = str(metadata_path)
    parity_name = f"parity_{fmt}.json" if stem == "student" else f"parity_{stem}_{fmt}.json"
    atomic_write_text(json.dumps(parity, indent=2) + "\n", run / "export" / parity_name)
    return parity


def _locate_student(path: Path) -> tuple[Path, Path]:
    """(run directory, its student.pt) for a run directory, or (its directory, the file) for a student export
    inside one (``student.pt``, or ``peer2.pt`` of a method that deploys several networks)."""
    if path.is_file() and path.suffix == ".pt" and path.name not in ("best.pt", "last.pt"):
        return path.parent, path
    if not path.is_dir():
        raise CheckpointError(
            f"{path} is not a run directory; pass the directory a `kdistill train` / `distill` run wrote"
        )
    student = path / "student.pt"
    if not student.is_file():
        raise CheckpointError(
            f"{path} has no student.pt: it is written when a run finishes its last epoch. Finish the run "
            f"(`kdistill train --resume` with its config) or pass a finished run directory."
        )
    return path, student


def _run_data(config: Config) -> Data:
    try:
        return build_data(config.data, config.seed)
    except DatasetNotFoundError as error:
        raise DatasetNotFoundError(
            f"the parity check runs the export on test images of the run's dataset ({config.data.name}), "
            f"which were not found: {error}"
        ) from None


def first_images(split: Dataset, count: int) -> tuple[Tensor, Tensor]:
    """The first ``count`` images (N, C, H, W) of a split of :func:`~kdistill.data.build_data` as its transform gives
    them, and their labels, read in batches (in-memory splits make each batch at once)."""
    inputs, targets, seen = [], [], 0
    for batch in make_loader(split, PARITY_BATCH, False, 0):
        inputs.append(batch.inputs[: count - seen].cpu())
        targets.append(batch.targets[: count - seen].cpu())
        seen += len(inputs[-1])
        if seen >= count:
            break
    return torch.cat(inputs), torch.cat(targets)


def _test_images(data: Data, count: int) -> tuple[Tensor, Tensor]:
    """The first ``count`` test images (N, C, H, W) as the run's eval transform gives them, and their labels."""
    if len(data.test) == 0:  # type: ignore[arg-type]
        raise ConfigError("the run's test split is empty: there is nothing to check the export on")
    return first_images(data.test, count)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _metadata(config: Config, info: DataInfo, data: Data, run: Path, student_path: Path) -> dict[str, Any]:
    mean = data.mean if data.mean is not None else info.input_mean
    std = data.std if data.std is not None else info.input_std
    return {
        "method": config.method.name,
        "num_classes": info.num_classes,
        "class_names": data.class_names,
        "input_shape": list(info.input_shape),  # (C, H, W)
        "input_mean": list(mean) if mean is not None else None,
        "input_std": list(std) if std is not None else None,
        "input": "float32 (batch, C, H, W): pixels scaled to [0, 1], then (x - input_mean) / input_std per channel",
        "output": "float32 (batch, num_classes) logits",
        "dataset": config.data.name,
        "kdistill_version": VERSION,
        "source_run": str(run.resolve()),
        "source_student_sha256": _sha256(student_path),
    }


# ----------------------------------------------------------------------------- writing files atomically


def _atomic_write(target: Path, write: Callable[[Path], object]) -> None:
    """``write(path)`` into a temp directory beside ``target``, then rename what it wrote into place.

    Writers that add side files (ONNX external data ``<name>.data``) keep their names; the main file
    is renamed last, so a reader never sees it without its side files.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        write(staging / target.name)
        written = sorted(staging.iterdir(), key=lambda p: p.name == target.name)  # the main file last
        for path in written:
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(path, target.parent / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_metadata(path: Path, metadata: dict[str, Any], fmt: str, artifact: Path) -> None:
    """``student.json``: the student's metadata; ``exports`` keeps one entry per exported format."""
    exports: dict[str, Any] = {}
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError:
            previous = {}
        if previous.get("source_student_sha256") == metadata["source_student_sha256"]:
            exports = dict(previous.get("exports", {}))  # other formats of the same student stay listed
    exports[fmt] = {"format": fmt, "file": artifact.name, "bytes": artifact.stat().st_size, "sha256": _sha256(artifact)}
    atomic_write_text(json.dumps({**metadata, "exports": exports}, indent=2) + "\n", path)


# ----------------------------------------------------------------------------- the three formats


@contextlib.contextmanager
def _torchscript_deprecation_silenced() -> Iterator[None]:
    """torch.jit warns that it is deprecated at every trace / save / load; the module docstring says so once."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


def _write_torchscript(
    module: nn.Module, example: Tensor, target: Path, metadata: dict, config: Config, info: DataInfo
) -> None:
    extra = {"kdistill.json": json.dumps({**metadata, "format": "torchscript"})}
    with _torchscript_deprecation_silenced():
        traced = torch.jit.trace(module, example)
        _atomic_write(target, lambda path: torch.jit.save(traced, str(path), _extra_files=extra))


def _read_torchscript(path: Path) -> Runner:
    with _torchscript_deprecation_silenced():
        return torch.jit.load(str(path), map_location="cpu").eval()


def _onnx_modules() -> tuple[Any, Any]:
    try:
        import onnxruntime
        import onnxscript  # the torch.export-based exporter needs it
    except ImportError as error:
        raise ConfigError(
            f"ONNX export needs onnx, onnxscript and onnxruntime ({error}): pip install 'kdistill[export]'"
        ) from None
    return onnxscript, onnxruntime


def onnx_program(module: nn.Module, example: Tensor) -> Any:
    """``module``'s ``torch.onnx.ONNXProgram`` from the ``torch.export``-based exporter (``dynamo=True``): input
    ``input`` (batch, C, H, W) with a dynamic batch axis, output ``logits``; ``example`` (B, C, H, W) with B >= 2."""
    _onnx_modules()
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        module,
        (example,),
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        dynamo=True,
        verbose=False,
    )
    if program is None:  # only without dynamo=True
        raise RuntimeError("torch.onnx.export returned no program")
    return program


def _write_onnx(
    module: nn.Module, example: Tensor, target: Path, metadata: dict, config: Config, info: DataInfo
) -> None:
    program = onnx_program(module, example)
    program.model.metadata_props["kdistill"] = json.dumps({**metadata, "format": "onnx"})
    _atomic_write(target, lambda path: program.save(str(path)))  # weights over 2 GB go to <name>.data


def _read_onnx(path: Path) -> Runner:
    _, onnxruntime = _onnx_modules()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(inputs: Tensor) -> Tensor:
        return torch.from_numpy(session.run(None, {input_name: inputs.numpy()})[0])

    return run


SAFETENSORS_KEY = "kdistill"  # header metadata key holding the JSON metadata + what rebuilding needs


def _write_safetensors(
    module: nn.Module, example: Tensor, target: Path, metadata: dict, config: Config, info: DataInfo
) -> None:
    # clones: a student may share tensors (SimKD's head with the teacher), which safetensors refuses
    state = {key: value.detach().clone().contiguous() for key, value in module.state_dict().items()}
    rebuild = {"config": to_dict(config), "num_train": info.num_train}
    header = {"format": "pt", SAFETENSORS_KEY: json.dumps({**metadata, "format": "safetensors", **rebuild})}
    _atomic_write(target, lambda path: save_file(state, str(path), metadata=header))


def load_safetensors_student(path: str | Path) -> nn.Module:
    """Rebuild the student of a kdistill ``student.safetensors`` (architecture from its header, tensors with
    ``safetensors.torch.load_file``); kdistill (and the model's library, e.g. timm) must be installed."""
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
    if SAFETENSORS_KEY not in header:
        raise CheckpointError(f"{path} has no kdistill metadata in its header; it was not written by `kdistill export`")
    recorded = json.loads(header[SAFETENSORS_KEY])
    payload = {
        "kind": STUDENT_KIND,
        "config": recorded["config"],
        "num_classes": recorded["num_classes"],
        "input_shape": recorded["input_shape"],
        "num_train": recorded["num_train"],
        "input_mean": recorded["input_mean"],
        "input_std": recorded["input_std"],
        "state_dict": load_file(str(path)),
    }
    return student_from_payload(payload)[0]


def _read_safetensors(path: Path) -> Runner:
    return load_safetensors_student(path)


WRITERS = {"torchscript": _write_torchscript, "onnx": _write_onnx, "safetensors": _write_safetensors}
READERS: dict[str, Callable[[Path], Runner]] = {
    "torchscript": _read_torchscript,
    "onnx": _read_onnx,
    "safetensors": _read_safetensors,
}


# ----------------------------------------------------------------------------- parity


@torch.no_grad()
def parity_check(reference: nn.Module, exported: Runner, images: Tensor, targets: Tensor) -> dict[str, Any]:
    """Max / mean absolute logit difference and top-1 agreement (%) of ``exported`` vs ``reference`` on
    ``images`` (N, C, H, W), run in batches of :data:`PARITY_BATCH`, plus both accuracies on ``targets``."""
    reference.eval()
    expected = torch.cat([reference(chunk).float() for chunk in images.split(PARITY_BATCH)])  # (N, K)
    actual = torch.cat([exported(chunk).float() for chunk in images.split(PARITY_BATCH)])  # (N, K)
    if actual.shape != expected.shape:
        raise CheckpointError(
            f"the export returns logits of shape {tuple(actual.shape)}, the student {tuple(expected.shape)}"
        )
    difference = (actual - expected).abs()
    return {
        "samples": images.shape[0],
        "max_abs_diff": difference.max().item(),
        "mean_abs_diff": difference.mean().item(),
        "top1_agreement": 100.0 * (actual.argmax(1) == expected.argmax(1)).float().mean().item(),
        "accuracy_pytorch": 100.0 * (expected.argmax(1) == targets).float().mean().item(),
        "accuracy_export": 100.0 * (actual.argmax(1) == targets).float().mean().item(),
    }
