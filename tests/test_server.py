"""``supportbot serve``: health, readiness, metrics, JSON errors, draining, and the real command."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from supportbot.config import Config, DatabaseSettings, LLMSettings, RetrySettings
from supportbot.server import serve
from supportbot.testing.fake_llm import FakeLLMServer, Hang, Reply


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer() as server:
        yield server


def config(fake: FakeLLMServer, tmp_path: Path, **server: Any) -> Config:
    return Config(
        llm=LLMSettings(base_url=fake.base_url, api_key="k", retries=RetrySettings(max_retries=0)),
        database=DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'serve.db'}"),
        server={"drain_timeout_s": 0.2, **server},  # type: ignore[arg-type]
    )


class Running:
    def __init__(self, url: str, stop: asyncio.Event, task: asyncio.Task[None]) -> None:
        self.url, self.stop, self.task = url, stop, task


async def start(server_config: Config) -> Running:
    """``serve`` in a task on a free port of 127.0.0.1, once it accepts connections."""
    stop = asyncio.Event()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(server_config, host="127.0.0.1", port=0, stop=stop, ready=ready.set_result))
    return Running(await asyncio.wait_for(ready, 10), stop, task)


@pytest.fixture
async def running(fake: FakeLLMServer, tmp_path: Path) -> AsyncIterator[Running]:
    server = await start(config(fake, tmp_path))
    yield server
    server.stop.set()
    await asyncio.wait_for(server.task, 10)


async def test_health_and_readiness(running: Running) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{running.url}/healthz") as response:
            assert response.status == 200
        async with http.get(f"{running.url}/readyz") as response:
            body = await response.json()
    assert response.status == 200
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["flows"] == "3 loaded"


async def test_unknown_routes_answer_json(running: Running) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{running.url}/nope") as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "not_found"


async def test_metrics_count_turns_tokens_tools_and_requests(running: Running, fake: FakeLLMServer) -> None:
    fake.script(
        Reply(tool_calls=[("transfer_to_order_status", {"reason": "order"})]), Reply(text="Sure.", usage=(50, 5))
    )
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{running.url}/api/v1/conversations", json={}) as response:
            opened = await response.json()
        async with http.post(
            f"{running.url}/api/v1/conversations/{opened['id']}/messages?stream=false", json={"text": "my order?"},
            headers={"Authorization": f"Bearer {opened['token']}"},
        ) as response:  # fmt: skip
            assert (await response.json())["status"] == "finished"
        async with http.get(f"{running.url}/metrics") as response:
            text = await response.text()
    assert 'supportbot_turns_total{channel="web",outcome="finished"} 1.0' in text
    assert 'supportbot_llm_tokens_total{direction="output"}' in text
    assert 'supportbot_tool_calls_total{outcome="ok",tool="transfer_to_order_status"} 1.0' in text
    assert 'supportbot_first_token_seconds_count{channel="web"} 1.0' in text
    assert 'supportbot_http_requests_total{method="POST",route="/api/v1/conversations",status="201"} 1.0' in text
    assert "supportbot_turn_duration_seconds_bucket" in text


async def test_a_stop_drains_and_hands_back_what_did_not_finish(fake: FakeLLMServer, tmp_path: Path) -> None:
    fake.script(Hang(30))
    first = await start(config(fake, tmp_path))
    url = first.url
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/v1/conversations", json={}) as response:
            opened = await response.json()
        async with http.post(
            f"{url}/api/v1/conversations/{opened['id']}/messages", json={"text": "hello"},
            headers={"Authorization": f"Bearer {opened['token']}"},
        ) as response:  # fmt: skip
            await response.content.readline()  # acknowledged
            await fake.wait_for_requests(1)
            first.stop.set()
            async with http.get(f"{url}/readyz") as ready_response:
                assert ready_response.status == 503  # draining: the load balancer stops sending
            started = time.monotonic()
            await asyncio.wait_for(first.task, 10)
    assert time.monotonic() - started < 5
    # The next start resumes it.
    fake.script(Reply(text="Back again."))
    second = await start(config(fake, tmp_path))
    url = second.url
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            async with http.get(
                f"{url}/api/v1/conversations/{opened['id']}/messages",
                headers={"Authorization": f"Bearer {opened['token']}"},
            ) as response:
                history = await response.json()
            if history["messages"][-1]["text"] == "Back again.":
                break
            await asyncio.sleep(0.05)
    second.stop.set()
    await asyncio.wait_for(second.task, 10)
    assert [m["text"] for m in history["messages"] if m["role"] == "customer"] == ["hello"]
    assert history["messages"][-1]["text"] == "Back again."


async def test_a_port_in_use_is_a_clear_error(fake: FakeLLMServer, tmp_path: Path) -> None:
    from supportbot.errors import ConfigError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            await serve(config(fake, tmp_path), port=port)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_command_serves_the_demo_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "SUPPORTBOT_LLM_API_KEY": ""}
    process = subprocess.Popen(
        [sys.executable, "-m", "supportbot.cli", "serve", "--demo", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "the server did not start within 30 s"
                time.sleep(0.1)
        import urllib.parse
        import urllib.request

        with urllib.request.urlopen(f"{base}/") as response:
            page = response.read().decode()
            assert "Content-Security-Policy" in response.headers
        assert "/widget.js" in page
        assert "SUPPORTBOT_BOOT" not in page  # the boot options were filled in
        # --demo signs in the demo customer with an identity token, as a shop's backend would.
        boot = re.search(r'"user": \{"token": "([^"]+)"\}', page)
        assert boot, page
        assert jwt.decode(boot.group(1), options={"verify_signature": False})["email"] == "ana@example.com"
        with urllib.request.urlopen(f"{base}/widget.js") as response:
            assert response.headers["Content-Type"].startswith("application/javascript")
        with urllib.request.urlopen(f"{base}/favicon.ico") as response:  # the demo page's icon: no 404
            assert response.status == 200 and response.headers["Content-Type"] == "image/x-icon"
        request = urllib.request.Request(f"{base}/api/v1/conversations", data=b"{}", method="POST")
        with urllib.request.urlopen(request) as response:
            assert json.loads(response.read())["greeting"]
        # The admin page: --demo with no admin credentials prints a token for this run, and it signs in.
        assert process.stderr is not None
        lines: list[str] = []
        while not (token := re.search(r"sign in with the token (\S+)", "".join(lines))) and len(lines) < 10:
            lines.append(process.stderr.readline())
        assert token, lines
        import http.cookiejar

        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        with opener.open(f"{base}/admin/login") as response:
            csrf = re.search(r'name="csrf" value="([^"]+)"', response.read().decode())
        assert csrf
        form = urllib.parse.urlencode({"csrf": csrf.group(1), "username": "admin", "password": token.group(1)})
        with opener.open(f"{base}/admin/login", data=form.encode()) as response:
            assert response.url == f"{base}/admin/tickets" and "Sign out" in response.read().decode()
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
        assert process.returncode == 0, stderr
        assert time.monotonic() - started < 10
        assert "offline demo model" in "".join(lines) + stderr
        assert (tmp_path / "supportbot.db").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_behind_a_trusted_proxy_the_client_and_the_origin_come_from_its_headers() -> None:
    from aiohttp.test_utils import make_mocked_request

    from supportbot.server import client_ip, public_origin

    headers = {"Host": "Support.Example", "X-Forwarded-Proto": "https", "X-Forwarded-For": "10.9.9.9, 203.0.113.9"}
    request = make_mocked_request("GET", "/", headers=headers)
    assert public_origin(request, behind_proxy=True) == "https://support.example"
    assert public_origin(request, behind_proxy=False) == "http://support.example"  # headers anyone could send
    assert client_ip(request, behind_proxy=True) == "203.0.113.9"
    assert client_ip(request, behind_proxy=False) != "203.0.113.9"
    odd = make_mocked_request("GET", "/", headers={"Host": "a.example", "X-Forwarded-Proto": "gopher"})
    assert public_origin(odd, behind_proxy=True) == "http://a.example"
