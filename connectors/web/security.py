"""The web channel's checks: allowed origins, conversation tokens, signed identities, rate limits.

A signed-in user of the host site is verified by what the site's backend signs with
``connectors.web.identity_secret``, and only for what it signs:

* ``user.token``: a JWT (HS256) with ``sub`` (the user's id), ``exp``, and optionally ``email``
  and ``name``: every claim in it is verified. The recommended way.
* ``user.hash`` = ``"v2:" + hex HMAC-SHA256(secret, "supportbot-identity-v2\n" + id + "\n" + email)``:
  the id and the email, both verified.
* ``user.hash`` = hex HMAC-SHA256(secret, id) (the older form, as Intercom's ``user_hash``):
  the id only. An email sent beside it is the page's claim, not verified.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jwt
import jwt.warnings
from aiohttp import web

from connectors.web.settings import WebSettings
from supportbot.server import public_origin

__all__ = [
    "IDENTITY_ALGORITHM",
    "Identity",
    "IdentityError",
    "RateLimiter",
    "hash_token",
    "identity_hash",
    "identity_hash_v2",
    "identity_token",
    "new_token",
    "origin_allowed",
    "token_from_request",
    "verify_hash",
    "verify_identity_token",
]

TOKEN_BYTES = 32
SUBPROTOCOL = "supportbot.v1"
TOKEN_PROTOCOL_PREFIX = "token."


def new_token() -> str:
    """A conversation token: 256 random bits, base64url (43 characters)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


IDENTITY_ALGORITHM = "HS256"
IDENTITY_LEEWAY_S = 60
"""Clock skew allowed between the site's backend and this server when checking ``exp``, ``nbf`` and ``iat``."""
MAX_TOKEN_LIFETIME_S = 7 * 24 * 3600
"""An identity token whose ``exp`` is further ahead than this is refused: it would be a password for good."""
MIN_SECRET_BYTES = 32
"""Shorter identity secrets work, but HS256 wants at least this many random bytes (RFC 7518 3.2)."""
HASH_V2_PREFIX = "v2:"
_HASH_V2_CONTEXT = "supportbot-identity-v2"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_HOW_TO_SIGN = (
    "make it on your server with connectors.web.identity_secret: "
    "jwt.encode({'sub': user_id, 'email': email, 'name': name, 'exp': now + 3600}, secret, algorithm='HS256')"
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Identity:
    """What the host site's signature proves about its user: the id always, the email and name when signed."""

    id: str
    email: str | None = None
    name: str | None = None


class IdentityError(Exception):
    """A signature that does not verify; the message says what is wrong and how the site's backend fixes it."""


def identity_hash(secret: str, identifier: str) -> str:
    """The older form a host site's backend computes for a signed-in user: hex HMAC-SHA256 of their id.

    It verifies the id only.
    """
    return hmac.new(secret.encode(), identifier.encode(), hashlib.sha256).hexdigest()


def identity_hash_v2(secret: str, user_id: str, email: str) -> str:
    """A hash that signs the id and the email together: ``v2:`` + hex HMAC-SHA256 of
    ``"supportbot-identity-v2\n" + id + "\n" + email`` (neither may contain a line break)."""
    message = f"{_HASH_V2_CONTEXT}\n{user_id}\n{email}"
    return HASH_V2_PREFIX + hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def identity_valid(secret: str, identifier: str, given: str) -> bool:
    return hmac.compare_digest(identity_hash(secret, identifier), given.strip().lower())


def verify_hash(secret: str, user_id: str, email: str | None, given: str) -> Identity:
    """Check ``user.hash``: a ``v2:`` hash verifies the id and the email, the older one the id alone."""
    given = given.strip()
    if given.lower().startswith(HASH_V2_PREFIX):
        if email is None:
            raise IdentityError("user.hash is a v2 hash, which signs user.id and user.email together; send both")
        expected = identity_hash_v2(secret, user_id, email)
        if not hmac.compare_digest(expected, given.lower()):
            raise IdentityError(
                "user.hash is not 'v2:' + hex HMAC-SHA256(identity_secret, 'supportbot-identity-v2\\n' + id + "
                "'\\n' + email) for this id and email (the email exactly as sent); compute it on your server "
                "with connectors.web.identity_secret"
            )
        return Identity(id=user_id, email=email)
    if not identity_valid(secret, user_id, given):
        raise IdentityError(
            "user.hash is not the hex HMAC-SHA256 of user.id with connectors.web.identity_secret; compute it on "
            "your server with that secret (or send user.token, a JWT that can also sign the email)"
        )
    return Identity(id=user_id)


def identity_token(
    secret: str, sub: str, *, email: str | None = None, name: str | None = None, lifetime_s: int = 3600
) -> str:
    """Sign an identity token as a host site's backend does (the demo page signs its customer with it)."""
    claims: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + lifetime_s}
    if email is not None:
        claims["email"] = email
    if name is not None:
        claims["name"] = name
    with _short_secret_allowed():
        return jwt.encode(claims, secret, algorithm=IDENTITY_ALGORITHM)


def verify_identity_token(secret: str, token: str, *, now: float | None = None) -> Identity:
    """Check ``user.token``, a JWT the host site signed with HS256; every claim in it is then verified.

    Only HS256 is accepted (never ``none``, never another algorithm); ``sub`` and ``exp`` are
    required, with ``IDENTITY_LEEWAY_S`` of clock skew, and ``exp`` at most ``MAX_TOKEN_LIFETIME_S`` ahead.
    """
    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError:
        raise IdentityError(f"user.token is not a JWT (three base64url parts joined by dots); {_HOW_TO_SIGN}") from None
    algorithm = header.get("alg")
    if algorithm != IDENTITY_ALGORITHM:
        raise IdentityError(f"user.token is signed with alg {algorithm!r}, but only HS256 is accepted; {_HOW_TO_SIGN}")
    now = time.time() if now is None else now
    try:
        with _short_secret_allowed():
            claims: dict[str, Any] = jwt.decode(
                token, secret, algorithms=[IDENTITY_ALGORITHM], leeway=IDENTITY_LEEWAY_S,
                options={"require": ["exp", "sub"], "verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )  # fmt: skip
    except jwt.MissingRequiredClaimError as exc:
        raise IdentityError(f"user.token has no {exc.claim!r} claim; {_HOW_TO_SIGN}") from None
    except jwt.InvalidSignatureError:
        raise IdentityError(
            "user.token's signature does not verify with connectors.web.identity_secret; sign it with that "
            "secret (HS256)"
        ) from None
    except jwt.InvalidTokenError as exc:
        raise IdentityError(f"user.token is not valid ({exc}); {_HOW_TO_SIGN}") from None
    _check_times(claims, now)
    sub, email, name = claims.get("sub"), claims.get("email"), claims.get("name")
    if not isinstance(sub, str) or not sub or len(sub) > 200 or _CONTROL.search(sub):
        raise IdentityError("user.token's 'sub' must be the user's id as a string of 1-200 characters, e.g. '42'")
    if email is not None and (not isinstance(email, str) or len(email) > 320 or not _EMAIL.match(email)):
        raise IdentityError("user.token's 'email' must be an email address (or left out)")
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        raise IdentityError("user.token's 'name' must be a string of at most 200 characters (or left out)")
    return Identity(id=sub, email=email, name=name)


@contextmanager
def _short_secret_allowed() -> Iterator[None]:
    """The web channel warns once at start about a short secret; PyJWT (2.10+) would warn at every use."""
    category = getattr(jwt.warnings, "InsecureKeyLengthWarning", None)
    with warnings.catch_warnings():
        if category is not None:
            warnings.simplefilter("ignore", category)
        yield


def _check_times(claims: dict[str, Any], now: float) -> None:
    """``exp`` (required), ``nbf`` and ``iat``, checked here against one clock so the messages can say how far off."""
    times = {}
    for claim in ("exp", "nbf", "iat"):
        value = claims.get(claim)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise IdentityError(f"user.token's {claim!r} must be a number of seconds since 1970 (a NumericDate)")
        times[claim] = float(value)
    exp = times["exp"]
    if exp + IDENTITY_LEEWAY_S <= now:
        raise IdentityError(
            f"user.token expired {_ago(now - exp)} ago; make a fresh token whenever your server renders the page "
            f"(exp a few minutes to hours ahead)"
        )
    if exp - now > MAX_TOKEN_LIFETIME_S + IDENTITY_LEEWAY_S:
        raise IdentityError(
            f"user.token's exp is {_ago(exp - now)} ahead; at most {MAX_TOKEN_LIFETIME_S // 86400} days are "
            f"accepted: make short-lived tokens (an hour is typical)"
        )
    for claim in ("nbf", "iat"):
        if claim in times and times[claim] - IDENTITY_LEEWAY_S > now:
            raise IdentityError(
                f"user.token's {claim!r} is {_ago(times[claim] - now)} in the future; check your server's clock"
            )


def _ago(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


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
