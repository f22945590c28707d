"""Teacher logits of augmented training, kept on disk: the data stream is replayable (the inputs of epoch e are a
function of the stream seed and e only, see :class:`kdistill.data.Indexed`), so the logits the teacher gave sample i
in epoch e of a stream can be served to every later run of the same stream instead of running the teacher.

One file per (stream, epoch, rank) under ``<output_dir>/.teacher-cache/stream-<key>/``, holding an (N_train, K)
table (NaN rows: not computed). The key covers everything that decides those logits: the teachers' weights, the
dataset (config, size and a fingerprint of replayed samples), the per-sample transform preset, the method's batch
augmentation, the stream seed, the batch size, ``train.teacher_views``, the world size, autocast, the device type and
the stored dtype. On read a file is checked (magic, key, shape, payload SHA-256) and, at the first batch it serves in
an epoch, against a live teacher forward on a few of that batch's samples; a file failing either is reported and
rebuilt, never served. Files are written whole to a temp file and renamed (two processes filling the same entry
leave one valid file); reads are memory-mapped, so a rank touches only its own rows.

For many classes, ``train.teacher_stream_topk=k`` stores per sample only the k largest logits, their class indices and
the log-sum-exp of all K (a float32 (N_train, 2k + 1) table): the served logits keep those k values and give the
other K - k classes equal shares of the remaining probability mass, so the teacher's softmax at T = 1 is exact on the
top k and sums to 1 (:func:`expand_topk`). That is an approximation of the teacher (FKD/ReLabel store top-k
probabilities the same way), recorded in the run's summary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from kdistill.contracts import Batch
from kdistill.methods import TeacherOutputs
from kdistill.methods.base import teacher_inputs
from kdistill.runtime.io import atomic_write_bytes

FORMAT = 1
MAGIC = b"KDTSTRM1"
HEADER_ALIGN = 64
CHECK_SAMPLES = 8  # samples of the first served batch of an epoch re-run through the live teacher
FINGERPRINT_SAMPLES = 64
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
logger = logging.getLogger(__name__)


def dataset_fingerprint(dataset: Dataset, samples: int = FINGERPRINT_SAMPLES) -> str:
    """SHA-256 over the size and ``samples`` evenly spaced items (inputs and targets) of a replayable train split,
    drawn at a stream epoch no training uses (-1), so a changed file, subset or transform changes it."""
    size = len(dataset)  # type: ignore[arg-type]
    digest = hashlib.sha256(f"{size}".encode())
    for index in np.linspace(0, size - 1, num=min(samples, size), dtype=np.int64).tolist():
        inputs, target, _ = dataset[(index, -1)]
        value = torch.as_tensor(inputs).detach().cpu().contiguous()
        digest.update(f"{index}:{target}:{tuple(value.shape)}:{value.dtype}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def stream_key(parts: dict[str, Any]) -> str:
    """SHA-256 of the parts that decide a stream's teacher logits (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps({"format": FORMAT, **parts}, sort_keys=True, default=str).encode()).hexdigest()


def table_layout(num_classes: int, dtype: str, topk: int) -> tuple[int, str]:
    """Columns and dtype of a stored table: K logits in ``dtype``, or with ``topk`` k the 2k + 1 float32 columns of
    :func:`compress_topk` (class indices must stay exact)."""
    return (2 * topk + 1, "float32") if topk else (num_classes, dtype)


@dataclass(frozen=True)
class StreamEntry:
    """Where and how one stream's tables are stored."""

    directory: Path
    key: str
    num_samples: int
    num_classes: int
    dtype: str = "float16"
    rank: int = 0
    topk: int = 0  # 0: the full (N, K) logits; k: the k largest, their indices and the log-sum-exp

    @property
    def width(self) -> int:
        return table_layout(self.num_classes, self.dtype, self.topk)[0]

    @property
    def table_dtype(self) -> str:
        return table_layout(self.num_classes, self.dtype, self.topk)[1]

    def path(self, epoch: int) -> Path:
        return self.directory / f"epoch-{epoch:05d}.rank-{self.rank}.kdts"


def compress_topk(logits: Tensor, k: int) -> Tensor:
    """(B, K) logits -> (B, 2k + 1) float32 rows: the k largest logits, their class indices, log-sum-exp over K."""
    logits = logits.float()
    values, indices = logits.topk(k, dim=1)
    return torch.cat([values, indices.float(), logits.logsumexp(dim=1, keepdim=True)], dim=1)


def expand_topk(rows: Tensor, num_classes: int) -> Tensor:
    """(B, 2k + 1) rows of :func:`compress_topk` -> (B, K) logits: the k stored values at their classes, and for the
    other K - k classes log((exp(lse) - sum_topk exp(v)) / (K - k)), an equal share of the remaining mass."""
    k = (rows.shape[1] - 1) // 2
    values, indices, lse = rows[:, :k], rows[:, k : 2 * k].long(), rows[:, 2 * k :]
    top_mass = torch.logsumexp(values, dim=1, keepdim=True) - lse  # log of the top k's share (<= 0)
    rest = lse + torch.log(-torch.expm1(top_mass.clamp_max(-1e-7))) - math.log(num_classes - k)
    logits = rest.expand(-1, num_classes).clone()
    return logits.scatter_(1, indices, values)


def _encode(table: Tensor, header: dict[str, Any]) -> bytes:
    """MAGIC, header length (8 bytes, little-endian), JSON header, padding to 64 bytes, raw table bytes."""
    payload = table.contiguous().view(torch.uint8).numpy().tobytes() if table.numel() else b""
    text = json.dumps({**header, "sha256": hashlib.sha256(payload).hexdigest()}).encode()
    start = len(MAGIC) + 8 + len(text)
    padding = b" " * (-start % HEADER_ALIGN)
    return MAGIC + (len(text) + len(padding)).to_bytes(8, "little") + text + padding + payload


def write_table(entry: StreamEntry, epoch: int, table: Tensor, seconds_per_sample: float) -> None:
    """Write one epoch's table atomically (the header records the teacher time per sample it cost)."""
    header = {
        "format": FORMAT, "key": entry.key, "epoch": epoch, "rank": entry.rank, "shape": list(table.shape),
        "dtype": entry.table_dtype, "topk": entry.topk, "teacher_s_per_sample": seconds_per_sample,
    }  # fmt: skip
    atomic_write_bytes(_encode(table.cpu(), header), entry.path(epoch))


def read_table(entry: StreamEntry, epoch: int) -> tuple[Tensor, dict[str, Any]] | None:
    """The epoch's table (memory-mapped, read-only) and its header; None when absent, or (reported) when the file
    is corrupt or belongs to another stream."""
    path = entry.path(epoch)
    if not path.exists():
        return None
    try:
        with path.open("rb") as stream:
            if stream.read(len(MAGIC)) != MAGIC:
                raise ValueError("not a kdistill teacher-stream file")
            length = int.from_bytes(stream.read(8), "little")
            header = json.loads(stream.read(length))
            offset = len(MAGIC) + 8 + length
            digest = hashlib.sha256()
            for chunk in iter(lambda: stream.read(1 << 22), b""):
                digest.update(chunk)
        shape = (entry.num_samples, entry.width)
        expected = {
            "key": entry.key, "epoch": epoch, "shape": list(shape), "dtype": entry.table_dtype, "rank": entry.rank,
            "topk": entry.topk,
        }  # fmt: skip
        wrong = [name for name, value in expected.items() if header.get(name) != value]
        if wrong:
            raise ValueError(f"its {', '.join(wrong)} differ from this run's")
        if digest.hexdigest() != header.get("sha256"):
            raise ValueError("its payload does not match the checksum in its header (truncated or modified)")
        torch_dtype = DTYPES[entry.table_dtype]
        size = math.prod(shape) * torch_dtype.itemsize
        raw = np.memmap(path, dtype=np.uint8, mode="c", offset=offset, shape=(size,))  # copy-on-write: file untouched
        table = (
            torch.frombuffer(raw, dtype=torch_dtype).view(shape) if raw.size else torch.empty(shape, dtype=torch_dtype)
        )
        return table, header
    except Exception as error:  # any reader error means rebuild
        logger.warning("teacher stream cache %s is rebuilt: %s", path, error)
        return None


class StreamTeacherOutputs(TeacherOutputs):
    """Teacher logits of a replayed stream, by (stream epoch, sample index): read from the epoch's table where it
    holds the batch's rows, else computed live and recorded; the epoch's table is (re)written at its end when rows
    were added and the epoch ran from its first step in this process (a mid-epoch resume only reads)."""

    def __init__(self, teachers: list[nn.Module], entry: StreamEntry) -> None:
        super().__init__(teachers)
        self.entry = entry
        self.epoch = 0
        self.table: Tensor | None = None  # what the file held
        self.recorded: Tensor | None = None  # the rows written this epoch (a writable copy)
        self.can_write = False
        self.checked = False
        self.epochs_read = self.epochs_written = self.epochs_rebuilt = 0
        self.live_seconds = 0.0
        self.saved_seconds = 0.0
        self.stored_rate = 0.0  # teacher seconds per sample recorded in the table's header

    def start_epoch(self, epoch: int, from_start: bool) -> None:
        self.epoch, self.can_write, self.checked = epoch, from_start, False
        self.recorded = None
        read = read_table(self.entry, epoch)
        self.table, self.stored_rate = (
            (read[0], float(read[1].get("teacher_s_per_sample", 0.0))) if read else (None, 0.0)
        )
        self.epochs_read += read is not None

    def _live(self, inputs: Tensor) -> Tensor:
        if inputs.is_cuda:
            torch.cuda.synchronize(inputs.device)
        started = time.perf_counter()
        logits = self.of(inputs)
        if inputs.is_cuda:
            torch.cuda.synchronize(inputs.device)
        self.live_seconds += time.perf_counter() - started
        return logits

    def _matches_live(self, batch: Batch, cached: Tensor) -> bool:
        """The first served batch of an epoch: a few of its samples through the live teacher, compared with the
        table (tolerance of the stored dtype's rounding)."""
        count = min(CHECK_SAMPLES, len(batch))
        live = self._live(teacher_inputs(batch)[:count])
        cached = cached[:count]
        if self.entry.topk:  # the stored values and log-sum-exp against the live ones (indices may break ties)
            keep = [*range(self.entry.topk), 2 * self.entry.topk]
            live, cached = compress_topk(live, self.entry.topk)[:, keep], cached[:, keep]
        tolerance = 1e-4 if self.entry.table_dtype == "float32" else 2e-2
        scale = live.abs().amax().clamp_min(1.0)
        return bool(((live - cached).abs() <= tolerance * scale).all())

    def logits(self, batch: Batch) -> Tensor:
        indices = batch.indices.cpu()
        if self.table is not None:
            cached = self.table[indices].to(device=batch.inputs.device, dtype=torch.float32)  # (B, K)
            if bool(torch.isfinite(cached).all()):
                if not self.checked:
                    self.checked = True
                    if not self._matches_live(batch, cached):
                        logger.warning(
                            "teacher stream cache %s does not match the live teacher on epoch %d's inputs "
                            "(changed teacher, data or transform code): rebuilt",
                            self.entry.path(self.epoch), self.epoch,
                        )  # fmt: skip
                        self.table, self.epochs_rebuilt = None, self.epochs_rebuilt + 1
                        return self.logits(batch)
                self.hits += len(batch)
                self.saved_seconds += self.stored_rate * len(batch)
                return expand_topk(cached, self.entry.num_classes) if self.entry.topk else cached
        logits = self._live(teacher_inputs(batch))
        if self.recorded is None:
            self.recorded = self.table.clone() if self.table is not None else self._empty()
        rows = compress_topk(logits.detach(), self.entry.topk) if self.entry.topk else logits.detach()
        self.recorded[indices] = rows.to(device="cpu", dtype=self.recorded.dtype)
        return logits

    def _empty(self) -> Tensor:
        shape = (self.entry.num_samples, self.entry.width)
        return torch.full(shape, math.nan, dtype=DTYPES[self.entry.table_dtype])

    def finish_epoch(self) -> None:
        if self.recorded is not None and self.can_write:
            rate = self.live_seconds / max(self.live_samples, 1)
            write_table(self.entry, self.epoch, self.recorded, rate)
            self.epochs_written += 1
        self.recorded = self.table = None

    def usage(self) -> dict[str, Any]:
        return {
            "teacher_stream_epochs_read": self.epochs_read,
            "teacher_stream_epochs_written": self.epochs_written,
            "teacher_stream_epochs_rebuilt": self.epochs_rebuilt,
            "teacher_live_seconds": round(self.live_seconds, 3),
            "teacher_seconds_saved": round(self.saved_seconds, 3),
        }
