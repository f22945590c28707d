"""Reading weights: kdistill checkpoints and exports, plain state dicts, safetensors; sha256 checks."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill.config import ConfigError

CHECKPOINT_KIND = "kdistill-checkpoint"  # last.pt / best.pt written by the trainer
STUDENT_KIND = "kdistill-student"  # student.pt written at the end of a run


class CheckpointError(RuntimeError):
    """A weights file is missing, corrupt, or does not fit the model; the message says what to do."""


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A run directory resolves to its exported ``student.pt`` (or ``best.pt`` / ``last.pt``)."""
    path = Path(path)
    if path.is_dir():
        for candidate in ("student.pt", "best.pt", "last.pt"):
            if (path / candidate).is_file():
                return path / candidate
        raise CheckpointError(f"{path} is a directory without student.pt, best.pt or last.pt; is it a kdistill run directory?")
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist. Train one with `kdistill train` (its run directory holds "
            f"best.pt and student.pt), or download the weights file and point `checkpoint:` at it."
        )
    return path


def read_checkpoint(path: str | Path, sha256: str | None = None) -> Any:
    """Load a ``.pt``/``.pth``/``.safetensors`` file safely (tensors and plain containers only)."""
    path = resolve_checkpoint_path(path)
    if sha256 is not None:
        actual = sha256_of(path)
        if actual.lower() != sha256.lower():
            raise CheckpointError(f"{path}: sha256 is {actual}, expected {sha256}; the file is corrupt or a different one")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for truncated / foreign files
        raise CheckpointError(f"{path} could not be read ({type(error).__name__}: {error}); the file is corrupt or not a checkpoint") from None


def architecture_from_checkpoint(path: str | Path, where: str = "model") -> tuple[str, dict]:
    payload = read_checkpoint(path)
    spec = payload.get("student_spec") if isinstance(payload, dict) else None
    if not spec:
        raise ConfigError(f"{where}: {path} does not record its architecture; set {where}.name (and kwargs)")
    return spec["name"], dict(spec["kwargs"])


def records_pretrained_inputs(path: str | Path) -> bool:
    """Whether a kdistill checkpoint's model descends from library-pretrained weights (its spec says so)."""
    payload = read_checkpoint(path)
    spec = payload.get("student_spec") if isinstance(payload, dict) else None
    return bool(spec and spec.get("pretrained_inputs"))


def extract_state_dict(payload: Any) -> dict[str, torch.Tensor]:
    """The model weights inside any supported checkpoint layout."""
    if not isinstance(payload, dict):
        raise CheckpointError("checkpoint is not a mapping of weights")
    kind = payload.get("kind")
    if kind == STUDENT_KIND:
        return payload["state_dict"]
    if kind == CHECKPOINT_KIND:
        prefix = "student."
        return {k[len(prefix):]: v for k, v in payload["method_state"].items() if k.startswith(prefix)}
    for key in ("state_dict", "model", "model_state_dict", "net"):  # common wrappers (RepDistiller: "model")
        if isinstance(payload.get(key), dict):
            return payload[key]
    return payload


def load_weights(model: nn.Module, path: str | Path, sha256: str | None = None, where: str = "model") -> None:
    """Load weights into ``model``; a mismatch names the first differing keys."""
    payload = read_checkpoint(path, sha256)
    state = extract_state_dict(payload)
    state = {k.removeprefix("module."): v for k, v in state.items()}  # DataParallel / DDP saves
    target = model.state_dict()
    wrapped = {k for k in target if k.startswith("model.")}  # adapters hold the outside model as .model
    if wrapped and not any(k.startswith("model.") for k in state):
        state = {f"model.{k}": v for k, v in state.items()}
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    wrong_shape = [k for k in target if k in state and tuple(state[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or wrong_shape:
        details = []
        if missing:
            details.append(f"missing {len(missing)} (e.g. {', '.join(missing[:3])})")
        if unexpected:
            details.append(f"unexpected {len(unexpected)} (e.g. {', '.join(unexpected[:3])})")
        if wrong_shape:
            k = wrong_shape[0]
            details.append(f"{len(wrong_shape)} of another shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(target[k].shape)})")
        raise CheckpointError(
            f"{where}: {path} does not fit the configured architecture: {'; '.join(details)}. "
            f"Check {where}.name / kwargs and the dataset's number of classes."
        )
    model.load_state_dict(state)
