"""Who may use the admin page and API: passwords, the admin token, sessions, CSRF, login throttling.

A sign-in makes a session row (only the SHA-256 of the cookie's secret is stored, so a database
leak does not sign anyone in) with its own CSRF token, which every form and ``fetch`` must send
back. The session cookie is ``HttpOnly`` and ``SameSite=Strict``, ``Secure`` over HTTPS, and
scoped to ``/admin``. Failed sign-ins are counted per client address; past the limit the login
form answers 429 until the window has passed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections import deque
from datetime import UTC, datetime, timedelta

from aiohttp import web

from supportbot.admin.passwords import verify_password
from supportbot.config import AdminSettings
from supportbot.store.review import AdminSession, Review
from supportbot.webapp import client_ip, public_origin

__all__ = ["COOKIE", "CSRF_FIELD", "CSRF_HEADER", "Auth", "LoginThrottle"]

COOKIE = "sb_admin"
LOGIN_COOKIE = "sb_admin_login"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"
ADMIN_USER = "admin"
WINDOW_S = 300.0


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class LoginThrottle:
    """Failed sign-ins per client address within a sliding five-minute window (per process)."""

    def __init__(self, limit: int, *, window_s: float = WINDOW_S, max_clients: int = 10_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str, now: float) -> deque[float]:
        failures = self._failures.get(client, deque())
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        return failures

    def retry_after(self, client: str) -> int:
        """Seconds until ``client`` may try again; 0 when it may now."""
        now = time.monotonic()
        failures = self._recent(client, now)
        if len(failures) < self.limit:
            return 0
        return max(1, int(failures[0] + self.window_s - now + 0.999))

    def failed(self, client: str) -> None:
        now = time.monotonic()
        if client not in self._failures and len(self._failures) >= self.max_clients:
            # Forget the clients whose failures have all expired; at worst the oldest one.
            for key in [k for k, v in self._failures.items() if not self._recent(k, now)] or [
                next(iter(self._failures))
            ]:
                del self._failures[key]
        failures = self._recent(client, now)
        failures.append(now)
        self._failures[client] = failures

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


class Auth:
    """Checks credentials and sessions for the admin page (cookies) and the admin API (Bearer token).

    Args:
        settings: the ``admin`` section of the config.
        store: where operators and sessions are kept.
        extra_token: another token that signs in (``supportbot serve --demo`` makes one per run).
    """

    def __init__(
        self, settings: AdminSettings, store: Review, *, extra_token: str | None = None, behind_proxy: bool = False
    ) -> None:
        self.settings = settings
        self.store = store
        self.extra_token = extra_token
        self.behind_proxy = behind_proxy
        self.throttle = LoginThrottle(settings.login_attempts_per_5_minutes)

    # -- credentials -------------------------------------------------------------------------------

    def _tokens(self) -> list[str]:
        tokens = [self.settings.token.get_secret_value()] if self.settings.token else []
        return tokens + ([self.extra_token] if self.extra_token else [])

    def token_ok(self, given: str) -> bool:
        return any(hmac.compare_digest(given.encode(), token.encode()) for token in self._tokens())

    async def check_login(self, username: str, password: str) -> str | None:
        """The signed-in operator's name, or None for wrong credentials. The token signs in as ``admin``."""
        username = username.strip() or ADMIN_USER
        if password and self.token_ok(password):
            return username  # whoever holds the token is an administrator and names themself
        stored = await self.store.operator_password_hash(username)
        if stored is None and username == ADMIN_USER and self.settings.password_hash is not None:
            stored = self.settings.password_hash.get_secret_value()
        if stored is None:
            # Spend the same time as a real check, so a wrong name cannot be told from a wrong password.
            await asyncio.to_thread(verify_password, password, _DUMMY_HASH)
            return None
        ok = await asyncio.to_thread(verify_password, password, stored)
        return username if ok else None

    def api_request_ok(self, request: web.Request) -> bool:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and bool(value.strip()) and self.token_ok(value.strip())

    @property
    def api_enabled(self) -> bool:
        return bool(self._tokens())

    # -- sessions ----------------------------------------------------------------------------------

    async def start_session(self, username: str) -> tuple[str, AdminSession]:
        """A new session for ``username``: the cookie value and the stored session."""
        secret = secrets.token_urlsafe(32)
        at = datetime.now(UTC)
        session = AdminSession(
            id_hash=_sha256(secret),
            username=username,
            csrf_token=secrets.token_urlsafe(32),
            created_at=at,
            expires_at=at + timedelta(hours=self.settings.session_hours),
        )
        await self.store.purge_admin_sessions()
        await self.store.create_admin_session(session)
        return secret, session

    async def session(self, request: web.Request) -> AdminSession | None:
        secret = request.cookies.get(COOKIE)
        if not secret or len(secret) > 200:
            return None
        return await self.store.get_admin_session(_sha256(secret))

    async def end_session(self, request: web.Request) -> None:
        secret = request.cookies.get(COOKIE)
        if secret and len(secret) <= 200:
            await self.store.delete_admin_session(_sha256(secret))

    @staticmethod
    def csrf_ok(session: AdminSession, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(session.csrf_token.encode(), (given or "").encode())

    def client(self, request: web.Request) -> str:
        """Whose sign-ins are counted: the address, or a trusted proxy's ``X-Forwarded-For`` client."""
        return client_ip(request, behind_proxy=self.behind_proxy)

    def same_origin(self, request: web.Request) -> bool:
        """A browser's POST names its origin; it must be this server (no ``Origin``: not a browser, allowed)."""
        origin = request.headers.get("Origin")
        return origin is None or origin.lower() == public_origin(request, behind_proxy=self.behind_proxy)

    def set_cookie(
        self, response: web.StreamResponse, request: web.Request, name: str, value: str, max_age: int
    ) -> None:
        secure = public_origin(request, behind_proxy=self.behind_proxy).startswith("https:")
        response.set_cookie(
            name, value, max_age=max_age, path="/admin", httponly=True, samesite="Strict", secure=secure
        )


# verify_password's cost on an unknown user; the password is irrelevant.
_DUMMY_HASH = "scrypt$n=16384,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43
