"""The web channel's checks as units: tokens, signed identities, rate limits."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from pathlib import Path
from types import SimpleNamespace

import jwt
import pytest

from connectors.web.security import (
    Identity,
    IdentityError,
    RateLimiter,
    hash_token,
    identity_hash,
    identity_hash_v2,
    identity_valid,
    new_token,
    retry_after,
    verify_hash,
    verify_identity_token,
)

README = Path(__file__).parents[3] / "README.md"
SECRET = "a-widget-identity-secret-of-32-bytes-or-more"


def test_tokens_are_long_random_and_url_safe() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(t) >= 43 and t.replace("-", "").replace("_", "").isalnum() for t in tokens)  # ≥ 256 bits
    assert hash_token("abc") == hashlib.sha256(b"abc").hexdigest()


def test_the_identity_hash_is_what_the_readme_tells_a_backend_to_compute() -> None:
    secret, user_id = "s3cret", "42"
    backend = hmac.new(secret.encode(), str(user_id).encode(), hashlib.sha256).hexdigest()
    assert identity_hash(secret, user_id) == backend
    assert identity_valid(secret, user_id, backend.upper())  # hex in either case
    assert not identity_valid(secret, "43", backend)
    assert not identity_valid("other", user_id, backend)


def test_the_token_the_readme_tells_a_backend_to_make_verifies() -> None:
    section = README.read_text().split("## Embedding the widget in your site", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(import time, jwt.*?)```", section, re.S)
    assert code, "the README's Python example of the identity token is gone"
    user = SimpleNamespace(id=42, email="ana@example.com", name="Ana")
    scope = {"user": user, "secret": SECRET}
    exec(code.group(1), scope)
    assert verify_identity_token(SECRET, scope["token"]) == Identity(id="42", email="ana@example.com", name="Ana")


def test_the_v2_hash_signs_the_id_and_the_email_as_the_readme_says() -> None:
    message = b"supportbot-identity-v2\n42\nana@example.com"
    backend = "v2:" + hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()
    assert identity_hash_v2(SECRET, "42", "ana@example.com") == backend
    assert verify_hash(SECRET, "42", "ana@example.com", backend.upper().replace("V2:", "v2:")) == Identity(
        id="42", email="ana@example.com"
    )
    with pytest.raises(IdentityError, match="for this id and email"):
        verify_hash(SECRET, "42", "ben@example.com", backend)
    with pytest.raises(IdentityError, match="for this id and email"):
        verify_hash(SECRET, "43", "ana@example.com", backend)


def test_the_older_hash_verifies_the_id_and_never_the_email() -> None:
    assert verify_hash(SECRET, "42", "ana@example.com", identity_hash(SECRET, "42")) == Identity(id="42")


def test_token_times_are_checked_against_one_clock() -> None:

    now = time.time()
    token = jwt.encode({"sub": "42", "exp": int(now) + 3600, "iat": int(now)}, SECRET, algorithm="HS256")
    assert verify_identity_token(SECRET, token, now=now).id == "42"
    with pytest.raises(IdentityError, match="expired"):
        verify_identity_token(SECRET, token, now=now + 3600 + 61)
    assert verify_identity_token(SECRET, token, now=now + 3600 + 59).id == "42"  # within the leeway
    with pytest.raises(IdentityError, match=r"'iat' is .* in the future; check your server's clock"):
        verify_identity_token(SECRET, token, now=now - 120)


def test_a_bucket_allows_a_burst_then_refills_at_its_rate() -> None:
    limiter = RateLimiter(3, 60)  # 3 a minute
    assert [limiter.hit("ip", now=0) for _ in range(3)] == [0, 0, 0]
    wait = limiter.hit("ip", now=0)
    assert wait == pytest.approx(20)  # one token every 20 s
    assert retry_after(wait) == "20"
    assert limiter.hit("ip", now=20) == 0
    assert limiter.hit("other", now=20) == 0  # keys are separate


def test_the_number_of_keys_is_capped() -> None:
    limiter = RateLimiter(1, 60, max_keys=10)
    for i in range(100):
        limiter.hit(f"ip{i}", now=0)
    assert len(limiter._buckets) == 10
