"""The on-disk teacher store: later runs in one output directory read the teachers' logits instead of running them,
get bitwise the same training, and a changed teacher, changed data or a corrupt entry is never served."""

from __future__ import annotations

import torch

from kdistill.api import fit
from kdistill.data import build_data, make_loader
from kdistill.engine.checkpoint import read_checkpoint
from kdistill.engine.evaluation import predict
from kdistill.engine.teacher_store import STORE_FOLDER, TeacherStore, teachers_digest

from helpers import digits_config

QUIET = {"log": lambda _: None}


def kd(tmp_path, name: str, teacher: str, *overrides: str):
    base = ["method.name=kd", f"teacher.checkpoint={teacher}", "train.epochs=1"]
    return digits_config(tmp_path, name, *base, *overrides)


def test_a_second_run_reads_the_teacher_logits_and_trains_bitwise_the_same(tmp_path, digits_teacher):
    first = fit(kd(tmp_path, "first", digits_teacher), **QUIET)
    second = fit(kd(tmp_path, "second", digits_teacher), **QUIET)
    alone = fit(kd(tmp_path / "alone", "alone", digits_teacher, "train.teacher_store=false"), **QUIET)
    # val, test and the (unaugmented) train split: computed by the first run, read by the second
    assert (first["teacher_store_hits"], first["teacher_store_misses"]) == (0, 3)
    assert (second["teacher_store_hits"], second["teacher_store_misses"]) == (3, 0)
    assert "teacher_store_hits" not in alone and not (tmp_path / "alone" / STORE_FOLDER).exists()
    assert len(list((tmp_path / STORE_FOLDER).glob("*.pt"))) == 3
    states = [read_checkpoint(tmp_path / n / "last.pt")["method_state"] for n in ("first", "second")]
    states.append(read_checkpoint(tmp_path / "alone" / "alone" / "last.pt")["method_state"])
    assert all(torch.equal(states[0][k], other[k]) for other in states[1:] for k in states[0])
    assert first["teacher_test_acc"] == second["teacher_test_acc"] == alone["teacher_test_acc"]


def test_a_changed_teacher_or_changed_inputs_miss_and_a_corrupt_entry_is_rebuilt(tmp_path, caplog):
    config = digits_config(tmp_path, "store")
    data = build_data(config.data, config.seed)
    loader = make_loader(data.test, 128, False, 0, 0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    device = torch.device("cpu")
    store = TeacherStore(tmp_path / "cache", [teacher])
    reference = predict(teacher, loader, device)
    assert all(torch.equal(a, b) for a, b in zip(store.predict(teacher, loader, device, False), reference))
    assert all(torch.equal(a, b) for a, b in zip(store.predict(teacher, loader, device, False), reference))
    assert (store.hits, store.misses) == (1, 1)

    changed = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    assert teachers_digest([changed]) != teachers_digest([teacher])
    batch_norm = torch.nn.BatchNorm1d(4)  # 0-dim buffers (num_batches_tracked) count too
    before = teachers_digest([batch_norm])
    batch_norm.num_batches_tracked += 1
    assert teachers_digest([batch_norm]) != before
    other = TeacherStore(tmp_path / "cache", [changed])
    assert torch.equal(other.predict(changed, loader, device, False)[0], predict(changed, loader, device)[0])
    assert (other.hits, other.misses) == (0, 1)
    subset = make_loader(torch.utils.data.Subset(data.test, range(50)), 128, False, 0, 0)
    assert store.predict(teacher, subset, device, False)[0].shape[0] == 50 and store.misses == 2

    for path in (tmp_path / "cache").glob("*.pt"):
        path.write_bytes(path.read_bytes()[:100])  # truncated, as by a crash of a non-atomic writer
    fresh = TeacherStore(tmp_path / "cache", [teacher])
    assert torch.equal(fresh.predict(teacher, loader, device, False)[0], reference[0])
    assert (fresh.hits, fresh.misses) == (0, 1) and "is rebuilt" in caplog.text
    again = TeacherStore(tmp_path / "cache", [teacher])
    assert torch.equal(again.predict(teacher, loader, device, False)[0], reference[0]) and again.hits == 1
