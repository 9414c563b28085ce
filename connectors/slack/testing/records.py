"""What the fake recorded: Web API calls and Socket Mode acknowledgements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True, slots=True)
class Call:
    """A Web API call the fake answered.

    Attributes:
        method: the method (``chat.postMessage``).
        params: the arguments (query, form or JSON body, JSON-typed ones decoded; the token left out).
        status: the HTTP status answered (429 for a rate limit).
        error: the ``error`` of an ``ok: false`` answer, None when ok.
        at: when it arrived (``time.monotonic()``).
    """

    method: str
    params: dict[str, Any]
    status: int
    error: str | None
    at: float

    @property
    def ok(self) -> bool:
        """Whether Slack answered ``ok: true``."""
        return self.status == 200 and self.error is None


@dataclass(frozen=True, kw_only=True, slots=True)
class Ack:
    """A Socket Mode acknowledgement.

    Attributes:
        envelope_id: the envelope acknowledged.
        payload: the response payload sent with the ack, if any.
        at: when it arrived (``time.monotonic()``).
    """

    envelope_id: str
    payload: Any
    at: float
