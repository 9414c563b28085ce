"""``supportbot serve --workers N``: N real processes on one port and one PostgreSQL schema, kept running."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from supportbot.cli import main
from tests.server_process import free_port, spawn_server, stop_server, wait_until_listening

pytestmark = pytest.mark.postgres


def write_config(directory: Path, database_url: str, **extra: object) -> Path:
    path = directory / "config.yaml"
    settings = {"database": {"url": database_url}, "server": {"drain_timeout_s": 2}, "logging": {"level": "WARNING"}}
    path.write_text(json.dumps({**settings, **extra}))  # JSON is YAML
    return path


def answering_pid(port: int) -> int:
    """Which worker answered a new connection's ``GET /healthz``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        assert json.load(response) == {"status": "ok"}
        return int(response.headers["X-Supportbot-Worker"])


def pids_answering(port: int, enough: Callable[[set[int]], bool], *, within_s: float = 30) -> set[int]:
    """Ask on new connections until the pids that answered are ``enough``; every request must work."""
    seen: set[int] = set()
    deadline = time.monotonic() + within_s
    while not enough(seen):
        assert time.monotonic() < deadline, f"only workers {sorted(seen)} answered within {within_s:.0f} s"
        seen.add(answering_pid(port))
    return seen


def flows_by_pid(port: int) -> tuple[int, str]:
    """Which worker answered a new connection's ``GET /readyz``, and how many flows it says it has loaded."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
        return int(response.headers["X-Supportbot-Worker"]), str(json.load(response)["checks"]["flows"])


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[1])


def running(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def wait_dead(pid: int) -> None:
    """Until ``pid`` has exited (its sockets closed): gone, or a zombie not yet reaped."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":
                    return
        except FileNotFoundError:
            return
        time.sleep(0.02)
    raise AssertionError(f"pid {pid} did not exit within 10 s")


async def test_two_workers_share_the_port_one_killed_is_replaced_and_sigterm_stops_all(
    tmp_path: Path, pg_url: str
) -> None:
    port = free_port()
    supervisor = spawn_server(write_config(tmp_path, pg_url), port, tmp_path, ["--workers", "2", "--demo"])
    try:
        wait_until_listening(supervisor, port)
        first = pids_answering(port, lambda seen: len(seen) == 2)
        assert {parent_of(pid) for pid in first} == {supervisor.pid}, "the workers are the supervisor's children"

        victim, survivor = sorted(first)
        os.kill(victim, signal.SIGKILL)
        wait_dead(victim)
        # The port keeps answering (every request below must work), and a new worker takes the dead one's place.
        after = pids_answering(port, lambda seen: survivor in seen and bool(seen - first))
        assert victim not in after
        (replacement,) = after - first
        assert parent_of(replacement) == supervisor.pid

        supervisor.send_signal(signal.SIGTERM)
        _, stderr = supervisor.communicate(timeout=30)
        assert supervisor.returncode == 0, stderr
        for pid in (survivor, replacement):
            assert f"worker pid {pid} is serving on" in stderr
            assert not running(pid), f"worker {pid} outlived the supervisor"
        assert f"(pid {victim}) killed by SIGKILL" in stderr
    finally:
        await stop_server(supervisor)


ANOTHER_FLOW = """\
name: shipping
description: Shipping costs and times
system_prompt: You answer questions about shipping.
"""


async def test_a_sighup_to_the_supervisor_reloads_the_flows_of_every_worker(tmp_path: Path, pg_url: str) -> None:
    (tmp_path / "flows").mkdir()
    config = write_config(tmp_path, pg_url, flows={"dir": "flows", "include_examples": True})
    port = free_port()
    supervisor = spawn_server(config, port, tmp_path, ["--workers", "2", "--demo"])
    try:
        wait_until_listening(supervisor, port)
        before: dict[int, str] = {}
        deadline = time.monotonic() + 30
        while len(before) < 2:
            assert time.monotonic() < deadline, f"only workers {sorted(before)} answered within 30 s"
            pid, flows = flows_by_pid(port)
            before[pid] = flows
        assert set(before.values()) == {"3 loaded"}, before  # the example flows
        workers = set(before)
        (tmp_path / "flows" / "shipping.yaml").write_text(ANOTHER_FLOW)
        supervisor.send_signal(signal.SIGHUP)
        # Each worker reloads in place: the same pids (not new workers, which would load the new file at start)
        # come to say 4 flows, and every request on the way works.
        reloaded: set[int] = set()
        deadline = time.monotonic() + 10
        while reloaded != workers:
            assert time.monotonic() < deadline, f"only workers {sorted(reloaded)} of {sorted(workers)} reloaded in 10 s"
            pid, flows = flows_by_pid(port)
            assert pid in workers, f"pid {pid} answered: a worker was restarted instead of reloaded"
            assert flows in ("3 loaded", "4 loaded"), flows
            if flows == "4 loaded":
                reloaded.add(pid)
        assert supervisor.poll() is None
    finally:
        await stop_server(supervisor)


async def test_workers_that_keep_crashing_at_start_end_the_supervisor_non_zero(tmp_path: Path, pg_url: str) -> None:
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "broken.py").write_text("raise RuntimeError('this tools module is broken')\n")
    port = free_port()
    supervisor = spawn_server(write_config(tmp_path, pg_url), port, tmp_path, ["--workers", "2", "--demo"])
    try:
        _, stderr = supervisor.communicate(timeout=60)
        assert supervisor.returncode == 1, stderr
        assert "workers keep crashing (5 exits within 30 s" in stderr, stderr
        assert "this tools module is broken" in stderr
    finally:
        await stop_server(supervisor)


def test_several_workers_on_sqlite_are_refused_with_the_fix(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'supportbot.db'}")
    result = CliRunner().invoke(main, ["serve", "-c", str(config), "--workers", "2"])
    assert result.exit_code == 1
    assert "--workers 2 needs PostgreSQL: database.url is SQLite" in result.output
    assert "postgresql+asyncpg://" in result.output and "--workers 1" in result.output
    assert not (tmp_path / "supportbot.db").exists()


@pytest.mark.parametrize("workers", ["0", "-3"])
def test_no_workers_is_a_clear_error(tmp_path: Path, workers: str) -> None:
    result = CliRunner().invoke(main, ["serve", "--workers", workers])
    assert result.exit_code == 2
    assert f"Invalid value for '--workers': {workers} is not a number of processes; use 1" in result.output


def test_a_port_held_by_another_program_is_refused_before_any_worker_starts(tmp_path: Path, pg_url: str) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        supervisor = spawn_server(write_config(tmp_path, pg_url), port, tmp_path, ["--workers", "2", "--demo"])
        _, stderr = supervisor.communicate(timeout=60)
    assert supervisor.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use; choose another port" in stderr
    assert "started" not in stderr


async def test_workers_of_a_supervisor_killed_9_drain_and_exit_by_themselves(tmp_path: Path, pg_url: str) -> None:
    port = free_port()
    supervisor = spawn_server(write_config(tmp_path, pg_url), port, tmp_path, ["--workers", "2", "--demo"])
    try:
        wait_until_listening(supervisor, port)
        workers = pids_answering(port, lambda seen: len(seen) == 2)
        os.kill(supervisor.pid, signal.SIGKILL)
        supervisor.communicate(timeout=10)
        for pid in workers:
            wait_dead(pid)  # no orphan keeps the port
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
    finally:
        await stop_server(supervisor)
