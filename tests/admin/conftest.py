"""The admin page's tests run against the same real server as the web channel's (loopback, fake model)."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest

from supportbot.admin.passwords import hash_password
from tests.connectors.web.conftest import WebServer, fake, server  # noqa: F401 - fixtures used by the tests here

TOKEN = "admin-token-for-the-tests-0123456789"
PASSWORD = "correct horse battery"
PASSWORD_HASH = hash_password(PASSWORD)


@pytest.fixture
def settings() -> dict[str, Any]:
    """The server's config sections: an admin token and the ``admin`` password, a small login limit."""
    return {"admin": {"token": TOKEN, "password_hash": PASSWORD_HASH, "login_attempts_per_5_minutes": 3}}


@pytest.fixture
async def browserish() -> Any:
    """A client with a cookie jar that keeps cookies of 127.0.0.1 (aiohttp's default jar skips IP hosts)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


async def sign_in(site: WebServer, jar_session: aiohttp.ClientSession, *, username: str = "admin",
                  password: str = PASSWORD) -> aiohttp.ClientResponse:  # fmt: skip
    """Fetch the login form (its CSRF cookie) and post the credentials; returns the final response."""
    async with jar_session.get(f"{site.url}/admin/login") as response:
        token = csrf_of(await response.text())
    response = await jar_session.post(
        f"{site.url}/admin/login", data={"csrf": token, "username": username, "password": password, "next": ""},
        allow_redirects=False,
    )  # fmt: skip
    await response.read()
    return response
