"""The teacher cache of augmented training: the data stream replays exactly, so stored teacher logits of each epoch
give bitwise the losses of the live teacher; a stale, tampered or corrupt entry is detected and rebuilt; two
processes filling the same entry leave one valid file."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from kdistill.api import cache_teacher, fit
from kdistill.config import load_config
from kdistill.contracts import ConfigError
from kdistill.data import build_data, make_loader, start_epoch
from kdistill.engine.checkpoint import read_checkpoint
from kdistill.engine.teacher_store import STORE_FOLDER
from kdistill.engine.teacher_stream import StreamEntry, compress_topk, expand_topk, read_table, write_table

from helpers import digits_overrides

QUIET = {"log": lambda _: None}
# per-sample random crop + flip (data.augment) and, on the device, Inception crop + flip + mixup (funmatch)
STREAM = ["method.name=funmatch", "data.augment=crop_flip", "train.epochs=2", "train.teacher_stream_dtype=float32"]


def stream_overrides(tmp_path, name: str, teacher: str, *extra: str) -> list[str]:
    return digits_overrides(tmp_path, name, f"teacher.checkpoint={teacher}", *STREAM, *extra)


def stream_config(tmp_path, name: str, teacher: str, *extra: str):
    return load_config(overrides=stream_overrides(tmp_path, name, teacher, *extra))


def train_losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["train_loss"] for line in lines]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run_dir / "last.pt")["method_state"]


def stream_files(output_dir: Path) -> list[Path]:
    return sorted((output_dir / STORE_FOLDER).glob("stream-*/epoch-*.kdts"))


def test_the_stream_replays_whatever_the_global_rng_and_the_loader_workers(tmp_path):
    config = load_config(overrides=digits_overrides(tmp_path, "replay", "data.augment=crop_flip"))

    def epoch_inputs(num_workers: int, epoch: int, stream_seed: int) -> torch.Tensor:
        data = build_data(config.data, config.seed, stream_seed)
        loader = make_loader(data.train, 64, True, stream_seed, num_workers, drop_last=True)
        start_epoch(loader, stream_seed, epoch)
        torch.manual_seed(1234 + num_workers)  # unrelated global RNG state
        return torch.cat([batch.inputs for batch in loader])

    reference = epoch_inputs(0, 1, 7)
    assert torch.equal(reference, epoch_inputs(2, 1, 7))  # same epoch of the same stream, other workers
    assert not torch.equal(reference, epoch_inputs(0, 2, 7))  # another epoch
    assert not torch.equal(reference, epoch_inputs(0, 1, 8))  # another stream


def test_cached_and_live_teacher_give_bitwise_identical_training_over_two_epochs(tmp_path, digits_teacher):
    live = fit(stream_config(tmp_path / "live", "live", digits_teacher, "train.teacher_store=false"), **QUIET)
    cold = fit(stream_config(tmp_path, "cold", digits_teacher), **QUIET)
    warm = fit(stream_config(tmp_path, "warm", digits_teacher), **QUIET)
    runs = [Path(s["run_dir"]) for s in (live, cold, warm)]
    assert train_losses(runs[0]) == train_losses(runs[1]) == train_losses(runs[2])
    reference = weights(runs[0])
    assert all(torch.equal(reference[k], weights(run)[k]) for run in runs[1:] for k in reference)

    steps = cold["teacher_live_samples"]  # the cold run ran the teacher on every training sample
    assert cold["teacher_stream_epochs_written"] == 2 and cold["teacher_cache_hits"] == 0 and steps > 0
    assert len(stream_files(tmp_path)) == 2
    assert warm["teacher_stream_epochs_read"] == 2 and warm["teacher_stream_epochs_written"] == 0
    assert warm["teacher_cache_hits"] == steps  # every sample served from the store
    assert warm["teacher_live_samples"] <= 2 * 8  # only the check of each epoch's first batch ran live
    assert warm["teacher_seconds_saved"] > 0
    assert "teacher_stream_epochs_read" not in live

    # another model seed on the same data stream is served too; another stream is not
    shared = fit(stream_config(tmp_path, "seed1", digits_teacher, "seed=1", "data.stream_seed=0"), **QUIET)
    assert shared["teacher_cache_hits"] == steps
    other = fit(stream_config(tmp_path, "seed2", digits_teacher, "seed=2"), **QUIET)
    assert other["teacher_cache_hits"] == 0 and other["teacher_stream_epochs_written"] == 2


@pytest.mark.parametrize("change", ["method.mixup_ratio=beta", "data.train_subset=900", "data.batch_size=32"])
def test_a_changed_augmentation_or_dataset_is_another_entry(tmp_path, digits_teacher, change):
    fit(stream_config(tmp_path, "first", digits_teacher, "train.epochs=1"), **QUIET)
    changed = fit(stream_config(tmp_path, "changed", digits_teacher, "train.epochs=1", change), **QUIET)
    assert changed["teacher_cache_hits"] == 0 and changed["teacher_stream_epochs_written"] == 1
    assert len(list((tmp_path / STORE_FOLDER).glob("stream-*"))) == 2


def test_a_changed_teacher_is_another_entry(tmp_path, digits_teacher):
    first = fit(stream_config(tmp_path, "first", digits_teacher, "train.epochs=1"), **QUIET)
    other_teacher = Path(first["run_dir"])  # the first run's student, as a teacher
    second = fit(stream_config(tmp_path, "second", str(other_teacher), "train.epochs=1"), **QUIET)
    assert second["teacher_cache_hits"] == 0 and second["teacher_stream_epochs_written"] == 1


def _only_entry(output_dir: Path, config) -> tuple[StreamEntry, Path]:
    (path,) = stream_files(output_dir)
    header = json.loads(path.read_bytes()[16 : 16 + int.from_bytes(path.read_bytes()[8:16], "little")])
    rows, classes = header["shape"]
    return StreamEntry(path.parent, header["key"], rows, classes, header["dtype"]), path


def test_a_tampered_entry_with_a_valid_checksum_fails_the_live_check_and_is_rebuilt(tmp_path, digits_teacher, caplog):
    config = stream_config(tmp_path, "first", digits_teacher, "train.epochs=1")
    live = fit(config, **QUIET)
    entry, path = _only_entry(tmp_path, config)
    table, header = read_table(entry, 0)
    write_table(entry, 0, table.clone() + 1.0, header["teacher_s_per_sample"])  # e.g. changed transform code
    again = fit(stream_config(tmp_path, "again", digits_teacher, "train.epochs=1"), **QUIET)
    assert "does not match the live teacher" in caplog.text
    assert again["teacher_stream_epochs_rebuilt"] == 1 and again["teacher_stream_epochs_written"] == 1
    assert train_losses(Path(again["run_dir"])) == train_losses(Path(live["run_dir"]))
    rebuilt = read_table(entry, 0)[0]  # holds the live logits again (NaN: samples the epoch's batches left out)
    assert torch.allclose(rebuilt, table, rtol=0, atol=0, equal_nan=True)


def test_a_corrupt_entry_is_detected_and_rebuilt(tmp_path, digits_teacher, caplog):
    live = fit(stream_config(tmp_path, "first", digits_teacher, "train.epochs=1"), **QUIET)
    (path,) = stream_files(tmp_path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte in the payload
    path.write_bytes(bytes(data))
    again = fit(stream_config(tmp_path, "again", digits_teacher, "train.epochs=1"), **QUIET)
    assert "does not match the checksum" in caplog.text
    assert again["teacher_cache_hits"] == 0 and again["teacher_stream_epochs_written"] == 1
    assert train_losses(Path(again["run_dir"])) == train_losses(Path(live["run_dir"]))
    path.write_bytes(b"KDTSTRM1" + b"\xff" * 7)  # truncated header
    truncated = fit(stream_config(tmp_path, "truncated", digits_teacher, "train.epochs=1"), **QUIET)
    assert truncated["teacher_stream_epochs_written"] == 1


def _fill(overrides: list[str]) -> None:
    torch.set_num_threads(1)
    fit(load_config(overrides=overrides), log=lambda _: None)


def test_two_processes_filling_the_same_entry_leave_one_valid_cache(tmp_path, digits_teacher):
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_fill, args=(stream_overrides(tmp_path, f"p{i}", digits_teacher),)) for i in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
        assert worker.exitcode == 0
    files = stream_files(tmp_path)
    assert len(files) == 2 and not list((tmp_path / STORE_FOLDER).rglob("*.tmp"))
    after = fit(stream_config(tmp_path, "after", digits_teacher), **QUIET)
    assert after["teacher_stream_epochs_read"] == 2 and after["teacher_stream_epochs_rebuilt"] == 0


def test_cache_teacher_fills_every_epoch_ahead_and_training_then_runs_no_teacher(tmp_path, digits_teacher):
    config = stream_config(tmp_path, "run", digits_teacher)
    filled = cache_teacher(config, log=lambda _: None)
    assert filled["teacher_stream_epochs_written"] == 2 and filled["teacher_samples_run"] > 0
    assert len(stream_files(tmp_path)) == 2
    again = cache_teacher(config, log=lambda _: None)  # already there: read and checked, nothing recomputed
    assert again["teacher_stream_epochs_read"] == 2 and again["teacher_stream_epochs_written"] == 0
    warm = fit(config, **QUIET)
    assert warm["teacher_stream_epochs_read"] == 2 and warm["teacher_stream_epochs_written"] == 0
    assert warm["teacher_cache_hits"] == filled["teacher_samples_run"]  # every training sample came from the cache
    live = fit(stream_config(tmp_path / "live", "live", digits_teacher, "train.teacher_store=false"), **QUIET)
    assert train_losses(Path(warm["run_dir"])) == train_losses(Path(live["run_dir"]))


def test_independent_noise_gives_the_teacher_its_own_view_and_that_view_is_cached_too(tmp_path, digits_teacher):
    cold = fit(stream_config(tmp_path, "cold", digits_teacher, "method.mode=independent_noise"), **QUIET)
    warm = fit(stream_config(tmp_path, "warm", digits_teacher, "method.mode=independent_noise"), **QUIET)
    assert cold["teacher_stream_epochs_written"] == 2 and warm["teacher_cache_hits"] == cold["teacher_live_samples"]
    assert train_losses(Path(cold["run_dir"])) == train_losses(Path(warm["run_dir"]))
    consistent = fit(stream_config(tmp_path, "consistent", digits_teacher, "method.mode=consistent"), **QUIET)
    assert consistent["teacher_cache_hits"] == 0  # another view spec: another entry, not the independent one


def test_teacher_views_cycle_the_stored_epochs_and_are_reported_as_an_approximation(tmp_path, digits_teacher):
    lines: list[str] = []
    summary = fit(stream_config(tmp_path, "views", digits_teacher, "train.teacher_views=1"), log=lines.append)
    assert summary["teacher_views"] == 1 and len(stream_files(tmp_path)) == 1
    assert summary["teacher_stream_epochs_written"] == 1 and summary["teacher_stream_epochs_read"] == 1
    assert summary["teacher_cache_hits"] > 0  # epoch 2 replayed epoch 1's inputs and read their logits
    assert any("approximation" in line for line in lines)
    losses = train_losses(Path(summary["run_dir"]))
    assert losses[1] < losses[0]  # the same inputs again: the student fits them better


def test_trials_sharing_a_stream_seed_share_their_subset_and_the_teachers_logits(tmp_path, digits_teacher):
    shared = ["train.epochs=1", "data.train_subset=900", "data.stream_seed=5"]
    first = fit(stream_config(tmp_path, "s0", digits_teacher, "seed=0", *shared), **QUIET)
    second = fit(stream_config(tmp_path, "s1", digits_teacher, "seed=1", *shared), **QUIET)
    assert first["teacher_stream_epochs_written"] == 1 and second["teacher_cache_hits"] == first["teacher_live_samples"]
    assert first["data_stream_seed"] == second["data_stream_seed"] == 5
    assert train_losses(Path(first["run_dir"])) != train_losses(Path(second["run_dir"]))  # the initialisation differs


def test_topk_rows_keep_the_top_probabilities_exactly_and_share_the_rest_evenly():
    torch.manual_seed(0)
    logits = torch.randn(6, 10) * 3
    rows = compress_topk(logits, 3)
    assert rows.shape == (6, 7) and rows.dtype == torch.float32
    expanded = expand_topk(rows, 10)
    probs, approx = logits.softmax(1), expanded.softmax(1)
    top = logits.topk(3, dim=1).indices
    assert torch.allclose(approx.gather(1, top), probs.gather(1, top), atol=1e-6)  # the top 3: exact
    assert torch.allclose(approx.sum(1), torch.ones(6), atol=1e-6)
    rest = torch.ones_like(probs, dtype=torch.bool).scatter_(1, top, False)
    shares = approx[rest].view(6, 7)
    expected = (1 - probs.gather(1, top).sum(1, keepdim=True)) / 7  # the remaining mass, evenly
    assert torch.allclose(shares, expected.expand(-1, 7), atol=1e-6)
    # with k = K - 1 the one remaining class gets its own probability back: the reconstruction is exact
    assert torch.allclose(expand_topk(compress_topk(logits, 9), 10).softmax(1), probs, atol=1e-5)


def test_a_topk_stream_stores_k_logits_per_sample_serves_them_and_is_recorded(tmp_path, digits_teacher):
    topk = ["train.teacher_stream_topk=3"]
    cold = fit(stream_config(tmp_path, "cold", digits_teacher, *topk), **QUIET)
    warm = fit(stream_config(tmp_path, "warm", digits_teacher, *topk), **QUIET)
    (first, _) = stream_files(tmp_path)
    raw = first.read_bytes()
    header = json.loads(raw[16 : 16 + int.from_bytes(raw[8:16], "little")])
    assert header["shape"][1] == 7 and header["dtype"] == "float32" and header["topk"] == 3
    assert cold["teacher_stream_epochs_written"] == 2 and warm["teacher_stream_epochs_read"] == 2
    assert warm["teacher_cache_hits"] == cold["teacher_live_samples"] > 0  # the check batches ran live and passed
    assert warm["teacher_stream_topk"] == 3 and "teacher_stream_topk" not in fit(
        stream_config(tmp_path, "full", digits_teacher, "train.epochs=1"), **QUIET
    )
    # the approximation changes the losses a little, not the training: the first epochs agree to a few percent
    assert train_losses(Path(warm["run_dir"]))[0] == pytest.approx(train_losses(Path(cold["run_dir"]))[0], rel=0.1)
    with pytest.raises(ConfigError, match="teacher_stream_topk=10 keeps every logit"):
        fit(stream_config(tmp_path, "all", digits_teacher, "train.teacher_stream_topk=10"), **QUIET)


def test_cache_teacher_compiles_the_teacher_as_a_compiled_training_run_does(tmp_path, digits_teacher):
    """train.compile is part of the cache key, so cache-teacher must store the compiled teacher's logits: a
    compiled run served from its table then trains bitwise as a compiled run with a live teacher."""
    config = stream_config(tmp_path, "run", digits_teacher, "train.epochs=1", "train.compile=true")
    counters.clear()
    filled = cache_teacher(config, log=lambda _: None)
    assert filled["teacher_stream_epochs_written"] == 1
    assert counters["stats"]["unique_graphs"] > 0, "cache-teacher ran the teacher eagerly"
    warm = fit(config, **QUIET)
    assert warm["teacher_stream_epochs_read"] == 1 and warm["teacher_cache_hits"] == filled["teacher_samples_run"]
    compiled_live = ("train.epochs=1", "train.compile=true", "train.teacher_store=false")
    live = fit(stream_config(tmp_path / "live", "live", digits_teacher, *compiled_live), **QUIET)
    assert train_losses(Path(warm["run_dir"])) == train_losses(Path(live["run_dir"]))
