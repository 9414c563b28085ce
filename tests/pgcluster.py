"""A private PostgreSQL cluster for fault tests: its own data directory, port and processes.

The shared server on 127.0.0.1:5432 must never be stopped by a test; a fault test starts one of
these instead, with the machine's binaries (``pg_config --bindir`` or /usr/lib/postgresql/*/bin),
trust authentication on loopback, and ``stop()`` / ``start()`` to simulate an outage. As root
(PostgreSQL refuses to run as root) the cluster runs as the ``postgres`` user via ``runuser``.
Teardown stops only the postmaster this cluster started and removes its directory.

``pg_cluster`` skips the test when the binaries are missing, or fails it when ``CI`` is set.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server_process import free_port

__all__ = ["PgCluster", "find_bindir", "pg_cluster"]


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or None when the server is not installed."""
    candidates: list[str] = []
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True, timeout=10)
        candidates.append(out.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in candidates:
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    return None


class PgCluster:
    """One PostgreSQL cluster in a temporary directory, listening on 127.0.0.1 only.

    ``fsync = off`` is safe for tests that crash the server (``stop("immediate")``): the operating
    system still holds every write; ``synchronous_commit`` stays on, so a commit that answered survives.
    """

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        self._root = Path(tempfile.mkdtemp(prefix="supportbot-pg-"))
        self.datadir = self._root / "data"
        self._log = self._root / "server.log"
        if self._as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(self._root, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.datadir), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self._root}'\n"
                "fsync = off\nfull_page_writes = off\nmax_connections = 100\n"
            )
        self.running = False

    @property
    def url(self) -> str:
        """The URL of the ``postgres`` database (a test creates its own with ``create_database``)."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> str:
        command = [str(self.bindir / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self._root)
        if result.returncode != 0:
            log = self._log.read_text(errors="replace")[-2000:] if self._log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}\n{log}")
        return result.stdout

    def start(self) -> None:
        """Start the postmaster and wait until it accepts connections."""
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self._log), "-w", "-t", "30", "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the postmaster: ``fast`` ends sessions cleanly, ``immediate`` is like a crash."""
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "30", "stop")
        self.running = False

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` with psql and return its unaligned output."""
        return self._run(
            "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port),
            "-U", "postgres", "-d", database, "-c", sql,
        )  # fmt: skip

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def close(self) -> None:
        """Stop this cluster's postmaster (if running) and remove its directory."""
        try:
            if self.running or (self.datadir / "postmaster.pid").exists():
                self.stop("immediate")
        finally:
            shutil.rmtree(self._root, ignore_errors=True)


@pytest.fixture
def pg_cluster() -> Iterator[PgCluster]:
    """A started private cluster; skipped without PostgreSQL's server binaries (failed under CI)."""
    bindir = find_bindir()
    if bindir is None:
        message = "PostgreSQL server binaries (initdb, pg_ctl) not found; apt-get install postgresql"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    cluster = PgCluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
