"""The Optuna study database of a sweep or a compress search: SQLite in the output directory, or any database URL
(PostgreSQL for several machines), connected at once so a wrong URL or a missing driver fails before any trial."""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from kdistill.errors import ConfigError

if TYPE_CHECKING:
    import optuna


def redacted(url: str) -> str:
    """A database URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


# Optuna creates a new database's tables and its schema-version row by check-then-create: processes opening a new
# database at once (the workers of a search, machines starting together, a reader of the study) collide with "table
# ... already exists" or a duplicate alembic_version row; measured with 4 processes opening a new SQLite file at a
# barrier, 8 rounds in 10 failed. The loser opens it again once the winner has created it.
CREATION_RACE = ("already exists", "UNIQUE constraint failed: alembic_version", "duplicate key value")
OPEN_ATTEMPTS = 6


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The study database, connected now: an unreachable server or a missing driver fails before any trial; a
    database another process is creating at the same moment is opened again (see :data:`CREATION_RACE`)."""
    import optuna

    options: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        options["connect_args"] = {"timeout": 120}  # writers wait for each other instead of failing
    try:
        for attempt in range(OPEN_ATTEMPTS - 1):
            try:
                return optuna.storages.RDBStorage(url, engine_kwargs=options)
            except Exception as error:
                if not any(text in str(error) for text in CREATION_RACE):
                    raise
                time.sleep(0.1 * 2**attempt)
        return optuna.storages.RDBStorage(url, engine_kwargs=options)
    except ModuleNotFoundError as error:
        hint = (
            "pip install 'kdistill[postgres]'" if url.startswith("postgres") else f"install the driver ({error.name})"
        )
        raise ConfigError(f"--storage {redacted(url)}: the database driver is missing: {hint}") from None
    except Exception as error:  # SQLAlchemy's connection errors, a bad URL
        raise ConfigError(
            f"--storage {redacted(url)} cannot be used: {str(error).splitlines()[0]}. Check that the server runs "
            "and the URL (dialect://user:password@host:port/database) is right; without --storage the study lives "
            "in SQLite in the sweep or compress directory"
        ) from None


@contextlib.contextmanager
def claim_lock_in(directory: Path) -> Iterator[None]:
    """An exclusive lock among the processes of this machine on ``<directory>/.claim.lock``: the workers of a sweep or
    a compress search decide and claim their next trial under it (SQLite needs it; it costs nothing elsewhere)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".claim.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
