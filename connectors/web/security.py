"""The web channel's checks: allowed origins, conversation tokens, signed identities, rate limits."""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from aiohttp import web

from supportbot.config import WebSettings
from supportbot.server import public_origin

__all__ = ["RateLimiter", "hash_token", "identity_hash", "new_token", "origin_allowed", "token_from_request"]

TOKEN_BYTES = 32
SUBPROTOCOL = "supportbot.v1"
TOKEN_PROTOCOL_PREFIX = "token."


def new_token() -> str:
    """A conversation token: 256 random bits, base64url (43 characters)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def identity_hash(secret: str, identifier: str) -> str:
    """What the host site's backend computes for a signed-in user: hex HMAC-SHA256 of their id (or email)."""
    return hmac.new(secret.encode(), identifier.encode(), hashlib.sha256).hexdigest()


def identity_valid(secret: str, identifier: str, given: str) -> bool:
    return hmac.compare_digest(identity_hash(secret, identifier), given.strip().lower())


def origin_allowed(request: web.Request, settings: WebSettings, *, behind_proxy: bool) -> bool:
    """No ``Origin`` (not a browser) passes; a browser's must be ours or listed in ``allowed_origins``."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    origin = origin.lower()
    return origin == public_origin(request, behind_proxy=behind_proxy) or origin in settings.allowed_origins


def token_from_request(request: web.Request) -> str | None:
    """The conversation token: ``Authorization: Bearer`` over HTTP, the ``token.`` subprotocol on a WebSocket."""
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    for protocol in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
        protocol = protocol.strip()
        if protocol.startswith(TOKEN_PROTOCOL_PREFIX):
            return protocol.removeprefix(TOKEN_PROTOCOL_PREFIX)
    return None


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets per key: ``rate`` events per ``period`` seconds, bursts up to ``rate``.

    Keys are kept in LRU order and capped, so a flood of distinct keys can't exhaust memory.
    """

    def __init__(self, rate: int, period: float, *, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.period = period
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def hit(self, key: str, *, now: float | None = None) -> float:
        """Take one event; returns 0 when allowed, else the seconds to wait before the next is."""
        now = time.monotonic() if now is None else now
        per_second = self.rate / self.period
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(tokens=float(self.rate), updated=now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(float(self.rate), bucket.tokens + (now - bucket.updated) * per_second)
            bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / per_second


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
