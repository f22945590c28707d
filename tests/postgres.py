"""A throw-away PostgreSQL server for tests: ``initdb`` + ``pg_ctl`` in a temp dir, listening on loopback only.

Debian's ``postgresql`` package provides the binaries (``make test`` installs it where apt is available). The
server refuses to run as root, so as root it runs as the package's ``postgres`` user; its data directory is a
fresh one under the system temp dir (pytest's own temp dirs are private to root, so that user could not enter them).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(
            f"PostgreSQL's {name} was not found: install Debian's postgresql (apt-get install -y postgresql; "
            "`make test` does this where apt is available)"
        )
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server in a fresh temp dir; yields the URL of an empty database ``kdistill``, removes it all after."""
    with tempfile.TemporaryDirectory(prefix="kdistill-postgres-") as name:
        yield from _serve(Path(name))


def _serve(root: Path) -> Iterator[str]:
    data, port = root / "pgdata", _free_port()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    user = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")

    def run(*command: str) -> None:
        done = subprocess.run(_as_server_user(list(command)), capture_output=True, text=True, cwd=root)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr or done.stdout}")

    run(_binary("initdb"), "-D", str(data), "-U", user, "--auth=trust", "--no-sync")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
    run(_binary("pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "server.log"), "-w", "start")
    try:
        run(_binary("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, "kdistill")
        yield f"postgresql://{user}@127.0.0.1:{port}/kdistill"
    finally:
        run(_binary("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
