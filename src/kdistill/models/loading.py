"""Reading weights: kdistill checkpoints and exports, plain state dicts, safetensors; sha256 checks."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill.contracts import CheckpointError, ConfigError

CHECKPOINT_KIND = "kdistill-checkpoint"  # last.pt / best.pt written by the trainer
STUDENT_KIND = "kdistill-student"  # student.pt written at the end of a run
# Harmless classes that peers' checkpoints hold besides tensors, allowed by name while loading (never registered
# globally): RepDistiller's <model>_last.pth stores its argparse options as "opt".
PEER_SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)
# Key prefixes of checkpoints that hold several models (mdistiller's distiller: module.student. / module.teacher.).
COMPOSITE_PREFIXES = ("module.student.", "module.teacher.", "student.", "teacher.", "model.")


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
        raise CheckpointError(
            f"{path} is a directory without student.pt, best.pt or last.pt; is it a kdistill run directory?"
        )
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist. Train one with `kdistill train` (its run directory holds "
            f"best.pt and student.pt), or download the weights file and point `checkpoint:` at it."
        )
    return path


def _refused_globals(path: Path, error: Exception) -> list[str]:
    """The globals torch's weights-only unpickler refused in ``path`` (empty if it refused none)."""
    names = re.findall(r"GLOBAL ([\w.]+)", str(error))  # the one torch's message names
    if zipfile.is_zipfile(path):  # torch lists all of them for zip-format files
        with contextlib.suppress(Exception):  # a damaged archive: the name in the message is what we have
            names += torch.serialization.get_unsafe_globals_in_checkpoint(path)
    allowed = {f"{cls.__module__}.{cls.__qualname__}" for cls in PEER_SAFE_GLOBALS}
    return list(dict.fromkeys(name for name in names if name not in allowed))


def _refused_error(path: Path, refused: list[str]) -> CheckpointError:
    return CheckpointError(
        f"{path} names the global(s) {', '.join(refused)}, refused for safety: unpickling them could run code. "
        f"If you trust the file, convert it once to a plain state dict, e.g. "
        f"torch.save(torch.load(PATH, weights_only=False)['model'], 'weights.pt'), and point `checkpoint:` at that."
    )


def read_checkpoint(path: str | Path, sha256: str | None = None) -> Any:
    """Load a ``.pt``/``.pth``/``.safetensors`` file safely (tensors, plain containers, :data:`PEER_SAFE_GLOBALS`)."""
    path = resolve_checkpoint_path(path)
    if sha256 is not None:
        actual = sha256_of(path)
        if actual.lower() != sha256.lower():
            raise CheckpointError(
                f"{path}: sha256 is {actual}, expected {sha256}; the file is corrupt or a different one"
            )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        with torch.serialization.safe_globals([*PEER_SAFE_GLOBALS]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for truncated / foreign files
        refused = _refused_globals(path, error) if isinstance(error, pickle.UnpicklingError) else []
        if refused:
            raise _refused_error(path, refused) from None
        raise CheckpointError(
            f"{path} could not be read ({type(error).__name__}: {error}); the file is corrupt or not a checkpoint"
        ) from None


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


def extract_state_dict(payload: Any, checkpoint_key: str | None = None) -> dict[str, torch.Tensor]:
    """The model weights inside any supported checkpoint layout.

    With ``checkpoint_key`` only the keys that start with it are kept, with the prefix stripped (a composite
    checkpoint: mdistiller's distiller ``module.student.`` / ``module.teacher.``, a kdistill ``last.pt``'s
    ``student.``).
    """
    if not isinstance(payload, dict):
        raise CheckpointError("checkpoint is not a mapping of weights")
    kind = payload.get("kind")
    if kind == STUDENT_KIND:
        weights = payload["state_dict"]
    elif kind == CHECKPOINT_KIND:
        weights = payload["method_state"]
        checkpoint_key = "student." if checkpoint_key is None else checkpoint_key
    else:
        wrappers = ("state_dict", "model", "model_state_dict", "net")  # common wrappers (RepDistiller: "model")
        weights = next((payload[key] for key in wrappers if isinstance(payload.get(key), dict)), payload)
    if checkpoint_key is None:
        return weights
    selected = {k[len(checkpoint_key) :]: v for k, v in weights.items() if k.startswith(checkpoint_key)}
    if not selected:
        found = _describe(_composite_prefixes(weights)) or f"none of {', '.join(COMPOSITE_PREFIXES)}"
        raise CheckpointError(
            f"no key of the checkpoint starts with checkpoint_key {checkpoint_key!r}; its key prefixes: {found}. "
            f"Set checkpoint_key to one of them, or leave it empty for a checkpoint of one model."
        )
    return selected


def _composite_prefixes(state: dict[str, Any], ignore: tuple[str, ...] = ()) -> dict[str, int]:
    """How many keys of ``state`` start with each of :data:`COMPOSITE_PREFIXES` (those in ``ignore`` left out)."""
    counts: dict[str, int] = {}
    for key in state:
        prefix = next((p for p in COMPOSITE_PREFIXES if key.startswith(p)), None)
        if prefix is not None and prefix not in ignore:
            counts[prefix] = counts.get(prefix, 0) + 1
    return counts


def _describe(prefixes: dict[str, int]) -> str:
    return ", ".join(f"{prefix} ({count} keys)" for prefix, count in prefixes.items())


def _mismatch(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> list[str]:
    """What keeps ``state`` from loading into a model whose state dict is ``target`` (empty: it fits)."""
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    wrong_shape = [k for k in target if k in state and tuple(state[k].shape) != tuple(target[k].shape)]
    details = []
    if missing:
        details.append(f"missing {len(missing)} (e.g. {', '.join(missing[:3])})")
    if unexpected:
        details.append(f"unexpected {len(unexpected)} (e.g. {', '.join(unexpected[:3])})")
    if wrong_shape:
        k = wrong_shape[0]
        details.append(
            f"{len(wrong_shape)} of another shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(target[k].shape)})"
        )
    return details


def _fit_to_target(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` as is, or without a DataParallel/DDP ``module.`` prefix if that alone makes it fit; adapters' keys
    get the ``model.`` they hold the outside model under. If nothing fits, the last candidate (for the error)."""
    candidates = [state]
    if state and all(k.startswith("module.") for k in state):
        candidates.append({k.removeprefix("module."): v for k, v in state.items()})
    wrapped = any(k.startswith("model.") for k in target)
    for candidate in candidates:
        if wrapped and not any(k.startswith("model.") for k in candidate):
            candidate = {f"model.{k}": v for k, v in candidate.items()}
        if not _mismatch(candidate, target):
            return candidate
    return candidate


def load_weights(
    model: nn.Module,
    path: str | Path,
    sha256: str | None = None,
    where: str = "model",
    checkpoint_key: str | None = None,
) -> None:
    """Load weights into ``model`` (``checkpoint_key``: see :func:`extract_state_dict`); a mismatch names the first
    differing keys and, for a composite checkpoint, the prefixes ``checkpoint_key`` can pick."""
    payload = read_checkpoint(path, sha256)
    try:
        state = extract_state_dict(payload, checkpoint_key)
    except CheckpointError as error:
        raise CheckpointError(f"{where}: {path}: {error}") from None
    target = model.state_dict()
    fitted = _fit_to_target(state, target)
    details = _mismatch(fitted, target)
    if not details:
        model.load_state_dict(fitted)
        return
    hint = f"Check {where}.name / kwargs and the dataset's number of classes."
    in_target = tuple(p for p in COMPOSITE_PREFIXES if any(k.startswith(p) for k in target))
    prefixes = _composite_prefixes(state, ignore=in_target) if checkpoint_key is None else {}
    if prefixes:
        hint = (
            f"The checkpoint holds several parts, by key prefix: {_describe(prefixes)}; pick one with "
            f"`{where}.checkpoint_key` (e.g. --set {where}.checkpoint_key={next(iter(prefixes))}; "
            "the prefix is stripped)."
        )
    raise CheckpointError(f"{where}: {path} does not fit the configured architecture: {'; '.join(details)}. {hint}")
