"""Prometheus metrics of a running supportbot: turns, latency, tokens, cost, tools, errors, connections, reloads.

Each ``Metrics`` has its own registry, so several servers (tests) in one process don't collide;
``GET /metrics`` renders it in the Prometheus text format.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from supportbot.events import Event, ToolCallFinished, TurnFailed, TurnFinished
from supportbot.llm.breaker import STATE_VALUES, ModelStats

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)
_FAST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """The counters, histograms and gauges; channels and the dispatcher feed them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.turns = Counter(
            "supportbot_turns", "Customer turns answered, by channel and outcome", ["channel", "outcome"], registry=r
        )
        self.turns_in_progress = Gauge("supportbot_turns_in_progress", "Turns running now", registry=r)
        self.turn_seconds = Histogram(
            "supportbot_turn_duration_seconds", "Time from a message to its complete reply", ["channel"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.first_token_seconds = Histogram(
            "supportbot_first_token_seconds", "Time from a message to the first piece of its reply", ["channel"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens = Counter("supportbot_llm_tokens", "Model tokens, by direction", ["direction"], registry=r)
        self.cost = Counter("supportbot_llm_cost_usd", "Model cost in US dollars", registry=r)
        self.tool_calls = Counter("supportbot_tool_calls", "Tool calls, by tool and outcome", ["tool", "outcome"],
                                  registry=r)  # fmt: skip
        self.tool_seconds = Histogram(
            "supportbot_tool_duration_seconds", "Tool run time", ["tool"], buckets=_FAST_BUCKETS, registry=r
        )
        self.errors = Counter("supportbot_errors", "Errors and refusals, by kind", ["kind"], registry=r)
        self.deliveries = Counter(
            "supportbot_deliveries", "Outbox deliveries, by channel and outcome (sent, retried, failed)",
            ["channel", "outcome"], registry=r,
        )  # fmt: skip
        self.delivery_seconds = Histogram(
            "supportbot_delivery_duration_seconds", "Time a channel took to send one reply", ["channel"],
            buckets=_FAST_BUCKETS, registry=r,
        )  # fmt: skip
        self.reloads = Counter(
            "supportbot_reloads", "Reloads of the flows and tools, by outcome (ok, refused)", ["outcome"], registry=r
        )
        self.websockets = Gauge("supportbot_websocket_connections", "Open widget WebSocket connections", registry=r)
        self.http_requests = Counter(
            "supportbot_http_requests", "HTTP requests, by method, route and status", ["method", "route", "status"],
            registry=r,
        )  # fmt: skip
        self.http_seconds = Histogram(
            "supportbot_http_request_duration_seconds", "HTTP request handling time (a stream: until it ends)",
            ["route"], buckets=_FAST_BUCKETS, registry=r,
        )  # fmt: skip
        self._model = _ModelCollector()
        r.register(self._model)

    def watch_model(self, stats: Callable[[], ModelStats]) -> None:
        """Show the model guard's numbers (``supportbot.llm.breaker.GuardedLLM.stats``), read at each scrape."""
        self._model.stats = stats

    def turn_event(self, channel: str, event: Event) -> None:
        """Count what an engine event tells: a finished or failed turn, its usage and cost, a tool call."""
        if isinstance(event, ToolCallFinished):
            self.tool_calls.labels(event.name, "error" if event.is_error else "ok").inc()
            self.tool_seconds.labels(event.name).observe(event.duration_ms / 1000)
        elif isinstance(event, TurnFinished):
            outcome = "awaiting_confirmation" if event.awaiting_confirmation else "finished" if event.text else "silent"
            self.turns.labels(channel, outcome).inc()
            self.tokens.labels("input").inc(event.usage.input_tokens)
            self.tokens.labels("output").inc(event.usage.output_tokens)
            self.cost.inc(event.cost_usd)
        elif isinstance(event, TurnFailed):
            self.turns.labels(channel, "failed").inc()
            self.errors.labels("llm").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ModelCollector(Collector):
    """The circuit breaker's state, the calls in flight and queued, fast failures and busy refusals.

    Read from ``stats`` at each scrape; the families are there, without samples, until a model is watched.
    """

    def __init__(self) -> None:
        self.stats: Callable[[], ModelStats] | None = None

    def collect(self) -> Iterator[Metric]:
        s = self.stats() if self.stats is not None else None
        state = GaugeMetricFamily(
            "supportbot_llm_circuit_state", "The model endpoint's circuit breaker: 0 closed, 1 open, 2 half-open",
            labels=["endpoint"],
        )  # fmt: skip
        fast = CounterMetricFamily(
            "supportbot_llm_fast_failures", "Model calls failed at once, unsent, while the circuit breaker was open",
            labels=["endpoint"],
        )  # fmt: skip
        in_flight = GaugeMetricFamily("supportbot_llm_calls_in_flight", "Model calls streaming now")
        queued = GaugeMetricFamily(
            "supportbot_llm_calls_queued", "Model calls waiting for a slot (llm.resilience.max_concurrent_calls)"
        )
        busy = CounterMetricFamily(
            "supportbot_busy_refusals", "Customer messages refused unstored (HTTP 429): the model call queue was full"
        )
        if s is not None:
            state.add_metric([s.endpoint], STATE_VALUES[s.state])
            fast.add_metric([s.endpoint], s.fast_failures)
            in_flight.add_metric([], s.in_flight)
            queued.add_metric([], s.queued)
            busy.add_metric([], s.busy_refusals)
        yield from (state, fast, in_flight, queued, busy)
