"""Teacher logits kept on disk across runs: the trials of a config and the points of a sweep share one output
directory, so the frozen teachers' pass over each split is paid by the first run only.

An entry is keyed by what decides the logits bit for bit: the teachers' classes and weights, the exact input
tensors of the split in loader order (hashed while they are loaded, which costs no teacher forward), autocast and
the device type. A changed teacher, dataset, split or transform therefore gives another key, never a stale hit.
An entry that cannot be read, or whose stored key or shape disagrees, is reported and rebuilt. Entries are written
atomically, so two processes building the same one leave one valid file.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from kdistill.engine.evaluation import predict
from kdistill.runtime.io import atomic_save

STORE_FOLDER = ".teacher-cache"
FORMAT = 1
logger = logging.getLogger(__name__)


def teachers_digest(teachers: Iterable[nn.Module]) -> str:
    """SHA-256 over the teachers' classes, parameter and buffer names, shapes, dtypes and values."""
    digest = hashlib.sha256()
    for teacher in teachers:
        digest.update(type(teacher).__qualname__.encode())
        for name, tensor in teacher.state_dict().items():
            value = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode())
            digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def inputs_digest(loader: DataLoader) -> tuple[str, int]:
    """SHA-256 over every input tensor and sample index of ``loader`` in order, and the number of samples."""
    digest, count = hashlib.sha256(), 0
    for batch in loader:
        inputs = batch.inputs.detach().cpu().contiguous()
        digest.update(f"{tuple(inputs.shape)}:{inputs.dtype}".encode())
        digest.update(inputs.view(torch.uint8).numpy().tobytes())
        digest.update(batch.indices.cpu().numpy().tobytes())
        count += len(inputs)
    return digest.hexdigest(), count


class TeacherStore:
    """``<directory>/<key>.pt`` entries of (logits, targets); counts what it served and what it computed."""

    def __init__(self, directory: str | Path, teachers: Iterable[nn.Module]) -> None:
        self.directory = Path(directory)
        self.teachers = teachers_digest(teachers)
        self.hits = 0
        self.misses = 0

    def predict(
        self, model: Callable[[Tensor], Tensor], loader: DataLoader, device: torch.device, amp: bool
    ) -> tuple[Tensor, Tensor]:
        """What :func:`~kdistill.engine.evaluation.predict` returns, read from the store when present."""
        inputs, count = inputs_digest(loader)
        key = hashlib.sha256(f"{FORMAT}:{self.teachers}:{inputs}:{amp}:{device.type}".encode()).hexdigest()
        path = self.directory / f"{key}.pt"
        stored = self._read(path, key, count)
        if stored is not None:
            self.hits += 1
            return stored[0].to(device), stored[1].to(device)
        logits, targets = predict(model, loader, device, amp)
        self.misses += 1
        atomic_save({"format": FORMAT, "key": key, "logits": logits.cpu(), "targets": targets.cpu()}, path)
        return logits, targets

    @staticmethod
    def _read(path: Path, key: str, count: int) -> tuple[Tensor, Tensor] | None:
        if not path.exists():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            logits, targets = entry["logits"], entry["targets"]
            valid = entry["key"] == key and logits.shape[0] == targets.shape[0] == count
            if valid and bool(torch.isfinite(logits).all()):
                return logits, targets
            problem = "its key, sample count or values do not match"
        except Exception as error:  # a truncated or foreign file: any reader error means rebuild
            problem = f"it cannot be read ({type(error).__name__}: {error})"
        logger.warning("teacher cache entry %s is rebuilt: %s", path, problem)
        return None

    def usage(self) -> dict[str, int]:
        return {"teacher_store_hits": self.hits, "teacher_store_misses": self.misses}
