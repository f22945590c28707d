"""Atomic file writes: a crash, a kill or a full disk mid-write leaves the previous file intact, and a full disk
is reported as such (which file, how much space it needs, how much is free)."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

from kdistill.contracts import DiskFullError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
TEMP_SUFFIX = ".tmp"


def payload_bytes(payload: Any) -> int:
    """The bytes of the tensors in a (nested) payload: about what ``torch.save`` writes."""
    if isinstance(payload, torch.Tensor):
        return payload.numel() * payload.element_size()
    if isinstance(payload, dict):
        return sum(payload_bytes(value) for value in payload.values())
    if isinstance(payload, (list, tuple)):
        return sum(payload_bytes(value) for value in payload)
    return 0


def _is_no_space(error: BaseException | None, directory: Path, needed: int) -> bool:
    """An ENOSPC/EDQUOT anywhere in the exception chain, or (torch's zip writer hides the errno) a failed write
    with less free space left than the file needs."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in NO_SPACE:
            return True
        seen = seen.__cause__ or seen.__context__
    if isinstance(error, (OSError, RuntimeError)):
        return shutil.disk_usage(directory).free < needed
    return False


def _disk_full(path: Path, needed: int, error: BaseException) -> DiskFullError:
    free = shutil.disk_usage(path.parent).free
    exists = "the previous version is intact" if path.exists() else "no earlier version existed"
    return DiskFullError(
        errno.ENOSPC,
        f"no space left on the device writing {path}: it needs about {needed / 1e6:.1f} MB and "
        f"{free / 1e6:.1f} MB are free ({exists}). Free some space or choose another output_dir, then resume "
        f"(--resume). Cause: {error}",
    )


@contextmanager
def _atomic_stream(path: Path, needed: int) -> Iterator[IO[bytes]]:
    """A temp file next to ``path``; renamed over it (after fsync) only if the block completes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException as error:
        Path(temp_name).unlink(missing_ok=True)
        if _is_no_space(error, path.parent, needed):
            raise _disk_full(path, needed, error) from error
        raise


def atomic_save(payload: Any, path: str | Path) -> None:
    """Write with ``torch.save`` to a temp file in the same directory, fsync, then rename.

    A crash mid-write leaves the previous file intact, never a truncated one; a full disk raises
    :class:`DiskFullError` saying so.
    """
    path = Path(path)
    with _atomic_stream(path, payload_bytes(payload)) as stream:
        torch.save(payload, stream)


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    """Write ``data`` atomically (temp file, fsync, rename)."""
    path = Path(path)
    with _atomic_stream(path, len(data)) as stream:
        stream.write(data)


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write ``text`` atomically (temp file, fsync, rename)."""
    atomic_write_bytes(text.encode(), path)


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete the temp files killed writes left in ``directory`` (``.<name>.<random>.tmp``); returns them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = [
        p for p in directory.iterdir() if p.is_file() and p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX)
    ]
    for stale in removed:
        stale.unlink(missing_ok=True)
    return removed
