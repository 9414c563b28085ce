"""``supportbot serve`` in a process of its own, for the tests that kill it (``kill -9``) and start it again."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(config: Path, port: int, cwd: Path, args: Sequence[str] = ()) -> subprocess.Popen[str]:
    """Start ``supportbot serve -c config --port port [args]`` and return once the port answers (30 s at most)."""
    process = spawn_server(config, port, cwd, args)
    wait_until_listening(process, port)
    return process


def spawn_server(
    config: Path, port: int, cwd: Path, args: Sequence[str] = (), *, stdin: int | None = None
) -> subprocess.Popen[str]:
    """Start ``supportbot serve -c config --port port [args]`` and return at once; ``stdin``: a file descriptor."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-m", "supportbot", "serve", "-c", str(config), "--port", str(port), *args],
        cwd=cwd, env=env, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def wait_until_listening(process: subprocess.Popen[str], port: int) -> None:
    """Return once the port answers (30 s at most); fail with the server's stderr if it ended."""
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the server did not start within 30 s"
            time.sleep(0.1)


async def stop_server(process: subprocess.Popen[str]) -> None:
    """Stop a server this test started: SIGTERM (it drains), then SIGKILL after 20 s."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(process.communicate, timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        await asyncio.to_thread(process.communicate)
