"""The web channel's checks as units: tokens, signed identities, rate limits."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from connectors.web.security import RateLimiter, hash_token, identity_hash, identity_valid, new_token, retry_after


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
