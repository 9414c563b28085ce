"""PostgreSQL stopped under a running ``supportbot serve``: non-2xx while it is down, then recovery with nothing lost.

A real server process on a private cluster (``tests/pgcluster.py``), the fake model, and the
widget's REST API. While the database is down every message gets a non-2xx answer; once it is
back the same process answers again (no restart), and every message that got a 2xx is stored
and answered exactly once.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from supportbot.testing.fake_llm import FakeLLMServer, Reply
from tests.pgcluster import PgCluster, pg_cluster
from tests.server_process import free_port, start_server

__all__ = ["pg_cluster"]

OUTAGE_S = float(os.environ.get("SUPPORTBOT_TEST_OUTAGE_S", "20"))


def _answer(body: dict[str, Any]) -> Reply:
    last = next(m for m in reversed(body["messages"]) if m["role"] == "user")
    content = last["content"] if isinstance(last["content"], str) else last["content"][0]["text"]
    return Reply(text=f"answer to {content}")


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer() as server:
        server.responder = _answer
        yield server


async def _post(http: aiohttp.ClientSession, url: str, token: str, text: str) -> int:
    """POST one widget message; the HTTP status, or 0 when no answer came at all."""
    try:
        async with http.post(
            f"{url}?stream=false", json={"text": text, "client_message_id": text},
            headers={"Authorization": f"Bearer {token}"}, timeout=aiohttp.ClientTimeout(total=30),
        ) as response:  # fmt: skip
            await response.read()
            return response.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


async def _ready(http: aiohttp.ClientSession, base: str) -> int:
    async with http.get(f"{base}/readyz", timeout=aiohttp.ClientTimeout(total=10)) as response:
        return response.status


async def test_messages_during_an_outage_get_non_2xx_and_accepted_ones_are_answered_once(
    pg_cluster: PgCluster, llm: FakeLLMServer, tmp_path: Path
) -> None:
    db_url = pg_cluster.create_database("outage")
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({
        "llm": {"base_url": llm.base_url, "api_key": "k", "model": "fake-model", "retries": {"max_retries": 0}},
        "database": {"url": db_url},
        "server": {"drain_timeout_s": 0.5},
        "logging": {"level": "WARNING"},
    }))  # fmt: skip
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = await asyncio.to_thread(start_server, config, port, tmp_path)
    # Read the server's stderr as it comes: a full pipe would block the server on its next log line.
    assert process.stderr is not None
    stderr = asyncio.create_task(asyncio.to_thread(process.stderr.read))
    statuses: dict[str, int] = {}
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/api/v1/conversations", json={}) as response:
                assert response.status == 201, await response.text()
                opened = await response.json()
            url = f"{base}/api/v1/conversations/{opened['id']}/messages"
            statuses["before"] = await _post(http, url, opened["token"], "before")
            assert statuses["before"] == 200
            assert await _ready(http, base) == 200

            await asyncio.to_thread(pg_cluster.stop, "fast")
            assert await _ready(http, base) == 503
            down_until = time.monotonic() + OUTAGE_S
            n = 0
            while time.monotonic() < down_until:
                n += 1
                statuses[f"down-{n}"] = await _post(http, url, opened["token"], f"down-{n}")
                await asyncio.sleep(0.5)
            await asyncio.to_thread(pg_cluster.start)

            # The same process recovers by itself.
            async with asyncio.timeout(30):
                while await _ready(http, base) != 200:  # noqa: ASYNC110 - polling another process over HTTP
                    await asyncio.sleep(0.2)
            for i in range(5):
                statuses[f"after-{i}"] = await _post(http, url, opened["token"], f"after-{i}")
    finally:
        process.terminate()  # it drains, then ends; stderr is read by the task above, not communicate()
        try:
            await asyncio.to_thread(process.wait, 20)
        except subprocess.TimeoutExpired:
            process.kill()
        log = await stderr
        process.stderr.close()

    down = {text: status for text, status in statuses.items() if text.startswith("down-")}
    assert down and set(down.values()) == {503}, down
    assert "unhandled error" not in log, log[-3000:]  # a database outage is a 503, not a server failure
    assert all(statuses[f"after-{i}"] == 200 for i in range(5)), statuses
    accepted = sorted(text for text, status in statuses.items() if 200 <= status < 300)
    rows = pg_cluster.psql(
        "SELECT m.content, count(*) FROM messages m WHERE m.role = 'assistant' GROUP BY m.content ORDER BY 1", "outage"
    ).splitlines()
    answers = dict(row.split("|") for row in rows) if rows else {}
    assert {f"answer to {text}": "1" for text in accepted} == {
        content: count for content, count in answers.items() if content.startswith("answer to ")
    }
    assert pg_cluster.psql("SELECT status, count(*) FROM inbox GROUP BY status", "outage").split() == [
        f"done|{len(accepted)}"
    ]
