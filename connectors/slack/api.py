"""Slack's Web API as the connector uses it: rate budgets per method, and failures as ``DeliveryError``.

Slack limits each Web API method per workspace and app by tier (Tier 2: 20+ calls a minute, Tier 3:
50+, Tier 4: 100+) and answers 429 with ``Retry-After`` beyond that. Live rendering is a courtesy:
it takes a call only when the method's ``Budget`` has one, and otherwise lets the text pile up for
the next call. Delivering the reply itself is never held back here: a 429 there becomes a
``DeliveryError`` with ``retry_after``, and the core's outbox worker waits and tries again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError

from supportbot.channels import DeliveryError

__all__ = ["TIERS", "Budget", "Budgets", "delivery_error", "error_code", "is_transient", "retry_after"]

TIERS: dict[str, int] = {
    "chat.startStream": 20,  # Tier 2
    "chat.appendStream": 100,  # Tier 4
    "chat.update": 50,  # Tier 3
    "chat.postMessage": 60,  # "special": about one a second per channel; live rendering posts at most one per turn
    "assistant.threads.setStatus": 50,  # Tier 3
    "assistant.threads.setTitle": 50,
    "assistant.threads.setSuggestedPrompts": 50,
}
"""Calls a minute each method may take for live rendering and assistant threads (Slack's tier floor)."""

# Errors after which the same call may work later; any other ok:false error is final (channel_not_found,
# not_in_channel, is_archived, invalid_auth, missing_scope, msg_too_long, ...).
_TRANSIENT = frozenset(
    {
        "ratelimited",
        "internal_error",
        "fatal_error",
        "service_unavailable",
        "request_timeout",
        "team_added_to_org",
        # a message still streaming cannot be edited; Slack ends idle streams within minutes
        "streaming_state_conflict",
    }
)


class Budget:
    """A token bucket: ``per_minute`` calls a minute, up to ``burst`` at once after a quiet spell."""

    def __init__(self, per_minute: float, *, burst: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.rate = per_minute / 60.0
        self.capacity = burst if burst is not None else max(1.0, per_minute / 6.0)  # ten seconds' worth
        self.clock = clock
        self._tokens = self.capacity
        self._at = clock()
        self._paused_until = 0.0

    def _refill(self) -> float:
        now = self.clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now
        return now

    def wait(self) -> float:
        """Seconds until a call may be made (0: now)."""
        now = self._refill()
        pause = max(0.0, self._paused_until - now)
        return max(pause, 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate)

    def take(self) -> bool:
        """Take a call if one is free now."""
        if self.wait() > 0:
            return False
        self._tokens -= 1
        return True

    def pause(self, seconds: float) -> None:
        """Slack said 429: no call before ``seconds`` from now."""
        self._paused_until = max(self._paused_until, self.clock() + seconds)


class Budgets:
    """One ``Budget`` per Web API method, for one workspace (one bot token)."""

    def __init__(self, tiers: dict[str, int] | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._tiers = tiers or TIERS
        self._clock = clock
        self._budgets: dict[str, Budget] = {}

    def __getitem__(self, method: str) -> Budget:
        budget = self._budgets.get(method)
        if budget is None:
            budget = self._budgets[method] = Budget(self._tiers.get(method, 20), clock=self._clock)
        return budget


def error_code(exc: SlackApiError) -> str:
    """Slack's error code of a failed call (``channel_not_found``), or ``http_<status>``."""
    data: Any = exc.response.data if exc.response is not None else None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])
    status = exc.response.status_code if exc.response is not None else 0
    return f"http_{status}"


def is_transient(exc: SlackApiError) -> bool:
    """Whether the same call may work later (a 429, a 5xx, ``internal_error``...)."""
    status = exc.response.status_code if exc.response is not None else 0
    return status == 429 or status >= 500 or error_code(exc) in _TRANSIENT


def retry_after(exc: SlackApiError) -> float | None:
    """Seconds from a 429's ``Retry-After`` header (None without one)."""
    if exc.response is None or exc.response.status_code != 429:
        return None
    value = (exc.response.headers or {}).get("Retry-After") or (exc.response.headers or {}).get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else 1.0
    except (TypeError, ValueError):
        return 1.0


def delivery_error(exc: BaseException, method: str) -> DeliveryError:
    """A failed Slack call as the outbox worker needs it: retry later or give up."""
    if isinstance(exc, SlackApiError):
        status = exc.response.status_code if exc.response is not None else 0
        code = error_code(exc)
        if status == 429:
            wait = retry_after(exc)
            return DeliveryError(f"Slack rate-limited {method} (429); retrying after {wait:g} s", retry_after=wait)
        retryable = is_transient(exc)
        fix = "" if retryable else f"; {_FIXES.get(code, 'see https://docs.slack.dev/reference/methods/' + method)}"
        return DeliveryError(f"Slack refused {method}: {code}{fix}", retryable=retryable)
    if isinstance(exc, (aiohttp.ClientError, asyncio.TimeoutError, TimeoutError, SlackClientError)):
        return DeliveryError(f"could not reach Slack for {method}: {type(exc).__name__}: {exc}", retryable=True)
    return DeliveryError(f"{method} failed: {type(exc).__name__}: {exc}", retryable=True)


_FIXES = {
    "channel_not_found": "the channel is gone or the bot cannot see it; invite the bot to the channel",
    "not_in_channel": "invite the bot to the channel (/invite @yourbot)",
    "is_archived": "the channel is archived; unarchive it or choose another",
    "invalid_auth": "connectors.slack.bot_token is wrong; copy the Bot User OAuth Token again",
    "not_authed": "connectors.slack.bot_token is missing",
    "token_revoked": "the app was uninstalled or its token revoked; reinstall it and update bot_token",
    "account_inactive": "the app was uninstalled or its token revoked; reinstall it and update bot_token",
    "missing_scope": "add the missing scope in 'OAuth & Permissions' (see docs/slack.md) and reinstall the app",
    "msg_too_long": "the reply is longer than Slack takes",
}
