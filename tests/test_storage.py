"""The Optuna study database (kdistill.runtime.storage): opened by several processes at the moment it is created."""

from __future__ import annotations

import multiprocessing

import optuna

from kdistill.runtime.storage import open_storage


def _open(url: str, barrier: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue) -> None:
    barrier.wait()  # every process creates the database at the same moment
    try:
        open_storage(url)
        results.put("ok")
    except Exception as error:  # reported to the test, which shows it
        results.put(f"{type(error).__name__}: {error}")


def test_processes_opening_a_new_database_at_once_all_get_it(tmp_path):
    # Without the retry, 8 rounds in 10 failed here ("table ... already exists", a duplicate alembic_version row):
    # the CI failure of a killed-compress test whose poller opened the study while the search was creating it.
    context = multiprocessing.get_context("fork")
    for round_ in range(4):
        url = f"sqlite:///{tmp_path / f'study{round_}.db'}"
        barrier, results = context.Barrier(4), context.Queue()
        processes = [context.Process(target=_open, args=(url, barrier, results)) for _ in range(4)]
        for process in processes:
            process.start()
        outcomes = [results.get(timeout=120) for _ in processes]
        for process in processes:
            process.join(timeout=60)
        assert outcomes == ["ok"] * 4, outcomes
        study = optuna.create_study(storage=open_storage(url), study_name="after")  # a usable study database
        assert study.study_name == "after"
