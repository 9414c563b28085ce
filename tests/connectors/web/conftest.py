"""A real ``supportbot serve`` application on 127.0.0.1 with the fake model, for the web channel's tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from connectors.web.security import identity_hash, identity_token
from supportbot.config import Config, load_config
from supportbot.runtime import Runtime, open_runtime
from supportbot.server import DISPATCHER, build_app
from supportbot.testing.fake_llm import FakeLLMServer

SECRET = "test-identity-secret-of-at-least-32-bytes"  # PyJWT warns about shorter HS256 keys
OTHER_ORIGIN = "http://127.0.0.1:9"  # an allowed embedding site (nothing listens there)


@dataclass
class WebServer:
    url: str
    app: web.Application
    runtime: Runtime
    fake: FakeLLMServer
    http: aiohttp.ClientSession

    @property
    def dispatcher(self) -> Any:
        return self.app[DISPATCHER]

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/widget/ws"

    async def open(
        self, user: dict[str, Any] | None = None, *, flow: str | None = None, **headers: str
    ) -> dict[str, Any]:
        """Open a conversation; returns the server's JSON (id, token, ...)."""
        body: dict[str, Any] = {"user": user} if user else {}
        if flow:
            body["flow"] = flow
        async with self.http.post(f"{self.url}/api/v1/conversations", json=body, headers=headers) as response:
            assert response.status == 201, await response.text()
            result: dict[str, Any] = await response.json()
            return result

    async def ask(self, conversation: dict[str, Any], text: str, **extra: Any) -> dict[str, Any]:
        """Send a message and wait for the reply as JSON."""
        async with self.http.post(
            f"{self.url}/api/v1/conversations/{conversation['id']}/messages?stream=false",
            json={"text": text, **extra},
            headers={"Authorization": f"Bearer {conversation['token']}"},
        ) as response:
            assert response.status == 200, await response.text()
            result: dict[str, Any] = await response.json()
            return result


def signed(user_id: str, email: str, name: str = "Ana Example") -> dict[str, Any]:
    """A signed-in user as the site's backend signs them: a token for their id, email and name."""
    return {"token": identity_token(SECRET, user_id, email=email, name=name)}


def hashed(user_id: str, email: str | None = None, name: str | None = None) -> dict[str, Any]:
    """A user signed with the older hash, which signs the id alone; email and name ride beside it unsigned."""
    user = {"id": user_id, "email": email, "name": name, "hash": identity_hash(SECRET, user_id)}
    return {key: value for key, value in user.items() if value is not None}


def write_config(tmp_path: Path, fake: FakeLLMServer, db_url: str, settings: dict[str, Any]) -> Config:
    """A config file for the server: the fake model, the database, and ``settings`` merged per section."""
    web_section = {"identity_secret": SECRET, "allowed_origins": [OTHER_ORIGIN], **settings.get("web", {})}
    sections = {
        "llm": {"base_url": fake.base_url, "api_key": "test-key", "model": "fake-model",
                "retries": {"max_retries": 0}},
        "database": {"url": db_url},
        "connectors": {"web": web_section},
        "logging": {"level": "WARNING"},
    }  # fmt: skip
    sections.update({k: v for k, v in settings.items() if k != "web"})
    text = json.dumps(sections)
    path = tmp_path / "config.yaml"
    path.write_text(text)  # JSON is YAML
    return load_config(path, env={})


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer(mode="gemini") as server:
        yield server


@pytest.fixture
def settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Config sections for the server (``web`` is ``connectors.web``); parametrize it indirectly to set them."""
    given: dict[str, Any] = getattr(request, "param", {})
    return given


@pytest.fixture
async def server(tmp_path: Path, fake: FakeLLMServer, settings: dict[str, Any]) -> AsyncIterator[WebServer]:
    config = write_config(tmp_path, fake, f"sqlite+aiosqlite:///{tmp_path / 'web.db'}", settings)
    runtime = await open_runtime(config)
    app = build_app(runtime)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as http:
        try:
            yield WebServer(url=f"http://127.0.0.1:{port}", app=app, runtime=runtime, fake=fake, http=http)
        finally:
            await app[DISPATCHER].drain(5)
            await runner.cleanup()
            await runtime.aclose()
