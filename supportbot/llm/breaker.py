"""Model outages contained: a circuit breaker on the endpoint and a cap on concurrent calls, as one ``LLM``.

``GuardedLLM`` wraps the model client (``supportbot.runtime`` builds it) and implements the same
``LLM`` protocol, so the engine does not know it is there:

* **Circuit breaker.** After ``failure_threshold`` failed calls in a row (a call that still failed
  after the client's own retries: connection error, timeout, HTTP 5xx or 429, a broken stream) the
  breaker *opens*: for ``open_s`` seconds every call raises ``LLMCircuitOpen`` at once and no request
  is sent, so the engine answers with its fallback. Then one call goes through as a probe
  (*half-open*; the others keep failing fast): success closes the breaker, failure opens it again.
  A 4xx caused by the request itself proves the endpoint answers and counts as no failure.
* **Concurrency cap.** At most ``max_concurrent_calls`` calls stream at once; the others wait in
  arrival order. ``check_capacity`` raises ``Busy`` while ``max_queued_calls`` are waiting, for the
  dispatcher to refuse a new message before it is stored.

The state is per worker process: each worker finds out about an outage on its own, after
``failure_threshold`` of its calls.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from supportbot.config import ResilienceSettings
from supportbot.errors import (
    Busy,
    LLMCircuitOpen,
    LLMConnectionError,
    LLMError,
    LLMHTTPError,
    LLMProtocolError,
    LLMTimeout,
)
from supportbot.llm.base import LLM, Completion, LLMRequest, StreamEvent

__all__ = ["BreakerState", "GuardedLLM", "ModelStats", "endpoint_label", "is_outage"]

log = logging.getLogger("supportbot.llm.breaker")

BreakerState = Literal["closed", "open", "half_open"]
STATE_VALUES: dict[BreakerState, int] = {"closed": 0, "open": 1, "half_open": 2}
"""``supportbot_llm_circuit_state``'s value for each state."""


def is_outage(exc: LLMError) -> bool:
    """Whether a failed call counts against the endpoint: it did not answer, or answered 5xx, 429 or 408.

    Any other 4xx is the request's fault (a bad key, a too-long prompt): the endpoint is up.
    """
    if isinstance(exc, LLMHTTPError):
        return exc.status >= 500 or exc.status in (408, 429)
    return isinstance(exc, LLMTimeout | LLMConnectionError | LLMProtocolError | LLMCircuitOpen)


def endpoint_label(base_url: str) -> str:
    """The endpoint as a metric label and in logs: the base URL without credentials, query or fragment."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelStats:
    """What ``GuardedLLM`` reports to ``/metrics`` at each scrape.

    Attributes:
        endpoint: the endpoint's label.
        state: the breaker's state.
        in_flight: calls streaming now.
        queued: calls waiting for a free slot.
        fast_failures: calls refused at once while the breaker was open, since the start.
        busy_refusals: messages refused because the queue was full, since the start.
    """

    endpoint: str
    state: BreakerState
    in_flight: int
    queued: int
    fast_failures: int
    busy_refusals: int


class GuardedLLM:
    """An ``LLM`` that guards another one with a circuit breaker and a concurrency cap (see the module docstring).

    Args:
        inner: the model client.
        settings: ``llm.resilience``.
        endpoint: the endpoint's label (``endpoint_label``), for the metric and logs.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        inner: LLM,
        settings: ResilienceSettings,
        *,
        endpoint: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.settings = settings
        self.endpoint = endpoint
        self.clock = clock
        self._state: BreakerState = "closed"
        self._failures = 0  # failed calls in a row
        self._opened_at = 0.0
        self._probing = False  # the half-open probe is running
        self._in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._fast_failures = 0
        self._busy_refusals = 0

    @property
    def state(self) -> BreakerState:
        """The breaker's state; an open breaker whose ``open_s`` have passed reads as half-open."""
        if self._state == "open" and self.clock() - self._opened_at >= self.settings.open_s:
            return "half_open"
        return self._state

    def stats(self) -> ModelStats:
        """The numbers ``/metrics`` shows (``Metrics.watch_model``)."""
        return ModelStats(
            endpoint=self.endpoint, state=self.state, in_flight=self._in_flight, queued=len(self._waiters),
            fast_failures=self._fast_failures, busy_refusals=self._busy_refusals,
        )  # fmt: skip

    def check_capacity(self) -> None:
        """Refuse a new customer message while ``max_queued_calls`` model calls already wait for a slot.

        Raises:
            Busy: with the ``Retry-After`` the channel should send.
        """
        settings = self.settings
        if len(self._waiters) >= settings.max_queued_calls and self._in_flight >= settings.max_concurrent_calls:
            self._busy_refusals += 1
            raise Busy(
                f"this worker is busy: {len(self._waiters)} model calls are waiting "
                f"(llm.resilience.max_queued_calls); send the message again in {settings.busy_retry_after_s} s",
                retry_after=settings.busy_retry_after_s,
            )

    async def stream(self, request: LLMRequest) -> AsyncIterator[StreamEvent]:
        """The inner model's stream, once the breaker allows it and a slot is free.

        Raises:
            LLMCircuitOpen: at once, with no request sent, while the breaker is open.
            LLMError: what the inner model raised.
        """
        probe = self._admit()
        try:
            await self._acquire()
        except BaseException:
            if probe:
                self._probing = False
            raise
        outcome: bool | None = None  # True: the endpoint answered; False: an outage failure; None: cut off
        events = self.inner.stream(request)
        try:
            async for event in events:
                if isinstance(event, Completion):
                    outcome = True
                yield event
        except LLMError as exc:
            outcome = not is_outage(exc)
            raise
        finally:
            self._release()
            self._record(outcome, probe)
            aclose = getattr(events, "aclose", None)  # an async generator cut off here is closed now, not at GC
            if aclose is not None:
                await aclose()

    async def aclose(self) -> None:
        """Close the inner model."""
        await self.inner.aclose()

    # -- the breaker -----------------------------------------------------------------------------

    def _admit(self) -> bool:
        """Let a call through, or raise ``LLMCircuitOpen``; True when the call is the half-open probe."""
        state = self.state
        if state == "closed":
            return False
        if state == "half_open" and not self._probing:
            if self._state == "open":
                self._state = "half_open"
                log.info("LLM endpoint %s: circuit breaker half-open; one probe call is let through", self.endpoint)
            self._probing = True
            return True
        self._fast_failures += 1
        wait = max(0.0, self._opened_at + self.settings.open_s - self.clock())
        raise LLMCircuitOpen(
            f"LLM endpoint {self.endpoint} failed {self.settings.failure_threshold} times in a row; calls fail at "
            f"once for {self.settings.open_s:g} s (llm.resilience.open_s), then one probe is let through "
            f"(next in {wait:.0f} s)",
            retry_after=wait,
        )

    def _record(self, outcome: bool | None, probe: bool) -> None:
        if probe:
            self._probing = False
        if outcome is None:
            if probe and self._state == "half_open":
                self._state, self._opened_at = "open", self.clock() - self.settings.open_s  # probe again next call
            return
        if outcome:
            if self._state != "closed":
                log.info("LLM endpoint %s: circuit breaker closed; the endpoint answered again", self.endpoint)
            self._state, self._failures = "closed", 0
            return
        self._failures += 1
        if self._state == "half_open" or (
            self._state == "closed" and self._failures >= self.settings.failure_threshold
        ):
            was = self._state
            self._state, self._opened_at = "open", self.clock()
            if was == "closed":
                log.warning(
                    "LLM endpoint %s: circuit breaker open after %d failed calls in a row; calls fail at once "
                    "for %g s", self.endpoint, self._failures, self.settings.open_s,
                )  # fmt: skip
            else:
                log.warning("LLM endpoint %s: the probe call failed; circuit breaker open again for %g s",
                            self.endpoint, self.settings.open_s)  # fmt: skip

    # -- the concurrency cap ---------------------------------------------------------------------

    async def _acquire(self) -> None:
        """Take a slot, waiting in arrival order behind the calls already waiting."""
        if self._in_flight < self.settings.max_concurrent_calls and not self._waiters:
            self._in_flight += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # ``_release`` hands its slot over: ``_in_flight`` already counts this call
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot just as it was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._in_flight -= 1
