"""Password hashes, the sign-in throttle, and how the admin page reads a request behind a proxy."""

from __future__ import annotations

from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from supportbot.admin.auth import Auth, LoginThrottle
from supportbot.admin.passwords import hash_password, verify_password
from supportbot.config import AdminSettings


def test_a_password_hash_verifies_only_its_password() -> None:
    stored = hash_password("correct horse battery")
    assert stored.startswith("scrypt$n=16384,r=8,p=1$")
    assert verify_password("correct horse battery", stored)
    assert not verify_password("correct horse batterY", stored)
    assert hash_password("correct horse battery") != stored  # salted
    for broken in ("", "scrypt$", "bcrypt$n=1$a$b", stored.replace("n=16384", "n=abc"), "scrypt$n=1048577,r=8,p=1$a$b"):
        assert not verify_password("correct horse battery", broken)
    with pytest.raises(ValueError, match="at least 10 characters"):
        hash_password("short")


def test_the_throttle_counts_failures_per_client_in_a_window() -> None:
    throttle = LoginThrottle(2, window_s=60)
    assert throttle.retry_after("a") == 0
    throttle.failed("a")
    throttle.failed("a")
    assert 0 < throttle.retry_after("a") <= 60
    assert throttle.retry_after("b") == 0
    throttle.succeeded("a")
    assert throttle.retry_after("a") == 0


def test_the_throttle_forgets_clients_when_full() -> None:
    throttle = LoginThrottle(1, window_s=60, max_clients=3)
    for client in "abcd":
        throttle.failed(client)
    assert throttle.retry_after("d") > 0
    assert sum(throttle.retry_after(c) > 0 for c in "abcd") == 3


def test_behind_a_trusted_proxy_https_is_this_origin_and_the_cookie_is_secure() -> None:
    store = cast(Any, None)
    proxied = Auth(AdminSettings(), store, behind_proxy=True)
    direct = Auth(AdminSettings(), store)
    headers = {"Host": "support.example", "Origin": "https://support.example", "X-Forwarded-Proto": "https",
               "X-Forwarded-For": "10.9.9.9, 203.0.113.9"}  # fmt: skip
    request = make_mocked_request("POST", "/admin/login", headers=headers)
    assert proxied.same_origin(request) and not direct.same_origin(request)
    assert proxied.client(request) == "203.0.113.9" and direct.client(request) != "203.0.113.9"
    for auth, secure in ((proxied, True), (direct, False)):
        response = web.Response()
        auth.set_cookie(response, request, "sb_admin", "x", max_age=60)
        assert bool(response.cookies["sb_admin"]["secure"]) is secure


def test_the_token_signs_in_and_a_short_token_is_refused_in_config() -> None:
    auth = Auth(AdminSettings(token="t" * 20), cast(Any, None), extra_token="demo-token-123")
    assert auth.token_ok("t" * 20) and auth.token_ok("demo-token-123") and not auth.token_ok("t" * 19)
    assert auth.api_enabled
    with pytest.raises(ValueError, match="16 or more random characters"):
        AdminSettings(token="short")
    with pytest.raises(ValueError, match="supportbot admin hash-password"):
        AdminSettings(password_hash="plain text")


async def test_without_a_token_the_admin_api_is_off() -> None:
    from supportbot.admin.api import AdminAPI
    from supportbot.operators import Operators

    async def handler(request: web.Request) -> web.Response:
        raise AssertionError("the handler must not run")

    api = AdminAPI(Auth(AdminSettings(), cast(Any, None)), Operators(cast(Any, None)))
    request = make_mocked_request("GET", "/api/v1/admin/tickets", headers={"Authorization": "Bearer anything-at-all"})
    response = await api.guard(handler)(request)
    assert response.status == 404 and b"set admin.token" in cast(web.Response, response).body  # type: ignore[operator]
