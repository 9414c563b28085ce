"""``supportbot serve``: one aiohttp server for health, metrics and every enabled channel.

The core serves ``/healthz``, ``/readyz`` and ``/metrics``; connectors come from the
``supportbot.connectors`` entry point group (each a ``supportbot.channels.Connector``;
``connectors.web`` is one), so this package never imports a connector. Each enabled connector adds
its routes and gives its channel to the ``Hub`` (``supportbot.delivery``), which delivers the
channel's replies from the outbox. ``serve`` binds, resumes what a previous run left unanswered
(turns, and replies not yet delivered), and on SIGTERM or SIGINT stops taking messages, lets
running turns finish within ``server.drain_timeout_s`` and hands the rest back to the inbox before
it closes. On SIGHUP, and with ``reload`` whenever a watched file changes, it reloads the flows and
tools (``supportbot.reload``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import entry_points
from typing import Any, cast

from aiohttp import web

from supportbot import admin
from supportbot.bus import open_bus
from supportbot.channels import ChannelBase, Connector
from supportbot.config import CONNECTOR_GROUP, Config
from supportbot.delivery import BUS_POLL_S, DeliveryStore, Hub
from supportbot.dispatch import Dispatcher
from supportbot.errors import ConfigError, StorageError
from supportbot.metrics import CONTENT_TYPE, Metrics
from supportbot.relay import Relay
from supportbot.reload import Outcome, Reloader
from supportbot.runtime import NO_MODEL, Runtime, open_runtime
from supportbot.webapp import (
    DISPATCHER,
    DRAINING,
    INTAKE,
    METRICS,
    NOTICES,
    OPENAPI,
    RUNTIME,
    add_openapi,
    client_ip,
    error_response,
    max_message_bytes,
    public_origin,
)

__all__ = [
    "CONNECTOR_GROUP",
    "DISPATCHER",
    "INTAKE",
    "METRICS",
    "NOTICES",
    "OPENAPI",
    "RUNTIME",
    "add_openapi",
    "build_app",
    "client_ip",
    "error_response",
    "max_message_bytes",
    "public_origin",
    "serve",
]

log = logging.getLogger("supportbot.server")

TICKET_SETTLE_S = 5.0
"""On PostgreSQL, how old a ticket must be before it is announced (see ``Hub``)."""
access_log = logging.getLogger("supportbot.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_TOO_LARGE = (
    "the request body is larger than {limit:,} bytes, the most a message within limits.max_message_chars, "
    "limits.max_images_per_message and limits.max_image_bytes can need; send a shorter message or smaller images"
)

_STORAGE_DOWN = "the database is not reachable right now; nothing was stored, send it again in a few seconds"


STORAGE_RETRY_AFTER_S = 5
"""What a request refused because the database is unreachable is told to wait before it tries again."""


@web.middleware
async def _observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Access log, request metrics, safe default headers, and JSON for errors a handler did not catch."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
    except web.HTTPException as exc:
        status = exc.status
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        # aiohttp's own refusals (413 body too large, 404, 405) in the same JSON shape as ours.
        if exc.status == 413:
            response = error_response(413, "too_large", _TOO_LARGE.format(limit=request.app._client_max_size))
        else:
            response = error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    except StorageError as exc:
        # The database down, restarting or out of connections: nothing was stored, so the client must try
        # again (a widget retries, Slack redelivers) instead of seeing a 2xx for a lost message.
        status = 503
        log.error("%s %s: %s", request.method, request.path, exc)
        request.app[METRICS].errors.labels("storage_unavailable").inc()
        return error_response(
            503, "storage_unavailable", _STORAGE_DOWN, headers={"Retry-After": str(STORAGE_RETRY_AFTER_S)}
        )
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        request.app[METRICS].errors.labels("http_500").inc()
        return error_response(500, "internal_error", "the server failed on this request; it has been logged")
    finally:
        elapsed = time.perf_counter() - started
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        metrics = request.app[METRICS]
        metrics.http_requests.labels(request.method, route, str(status)).inc()
        metrics.http_seconds.labels(route).observe(elapsed)
        access_log.info(
            "%s %s %d %.1fms", request.method, route, status, elapsed * 1000,
            extra={"method": request.method, "route": route, "status": status, "duration_ms": round(elapsed * 1000, 1),
                   "remote": request.remote},
        )  # fmt: skip
    if not response.prepared:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "strict-origin-when-cross-origin")
    return response


async def _healthz(request: web.Request) -> web.Response:
    """The process is up and serving (liveness)."""
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    """Ready for traffic: the database answers, flows are loaded, not shutting down."""
    runtime = request.app[RUNTIME]
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(runtime.store.get_conversation("readyz"), timeout=5)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    checks["flows"] = f"{len(runtime.flows)} loaded" if len(runtime.flows) else "none loaded"
    checks["model"] = (
        "connected" if runtime.has_model else "none: " + NO_MODEL.format(base_url=runtime.config.llm.base_url)
    )
    draining = request.app[DRAINING].is_set()
    if draining:
        checks["server"] = "shutting down"
    ready = checks["database"] == "ok" and len(runtime.flows) > 0 and not draining
    return web.json_response(
        {"status": "ready" if ready else "not_ready", "checks": checks}, status=200 if ready else 503
    )


def _openapi_base() -> dict[str, Any]:
    from supportbot._version import __version__

    return {
        "openapi": "3.1.0",
        "info": {"title": "supportbot API", "version": __version__, "description": ""},
        "paths": {},
        "components": {
            "securitySchemes": {},
            "responses": {},
            "schemas": {
                "Error": {
                    "type": "object",
                    "description": "Every refused request: what is wrong and how to fix it",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                        }
                    },
                }
            },
        },
    }


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def _connectors() -> list[Connector]:
    found = []
    for entry in entry_points(group=CONNECTOR_GROUP):
        connector = entry.load()
        if not isinstance(connector, Connector):
            raise ConfigError(
                f"the connector entry point {entry.name!r} ({entry.value}) is not a supportbot.channels.Connector; "
                "update the package that provides it"
            )
        found.append(connector)
    return found


def build_app(runtime: Runtime, *, metrics: Metrics | None = None) -> web.Application:
    """The server for this runtime, with the core routes, every enabled connector's and the admin page's."""
    config = runtime.config
    # The largest body any route takes is a customer's message (admin forms and replies are far smaller).
    app = web.Application(middlewares=[_observe], client_max_size=max_message_bytes(config.limits))
    app[RUNTIME] = runtime
    app[METRICS] = metrics or Metrics()
    if runtime.guard is not None:
        app[METRICS].watch_model(runtime.guard.stats)
    shared = getattr(runtime.store, "dialect", "") == "postgresql"  # several workers may share it
    dispatcher = Dispatcher(runtime.engine, runtime.store, metrics=app[METRICS], shared=shared)  # type: ignore[arg-type]
    app[DISPATCHER] = dispatcher
    hub = Hub(
        dispatcher, cast(DeliveryStore, runtime.store), give_up_after_s=config.server.delivery_give_up_after_s,
        admin_url=config.server.public_url, metrics=app[METRICS],
        ticket_settle_s=0.0 if config.database.url.startswith("sqlite") else TICKET_SETTLE_S,
    )  # fmt: skip
    app[INTAKE] = hub
    app[DRAINING] = asyncio.Event()
    app[NOTICES] = []
    app[OPENAPI] = _openapi_base()
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/api/v1/openapi.json", _openapi)
    for connector in _connectors():
        settings = config.connector(connector.name)
        if settings is None or not getattr(settings, "enabled", False):
            continue
        channel = connector.setup(app, settings)
        if isinstance(channel, ChannelBase):
            hub.register(channel)
        log.debug("connector %s enabled", connector.name)
    admin.setup(app)

    # Events between the workers of one database (PostgreSQL LISTEN/NOTIFY; nothing to do on SQLite).
    bus = open_bus(config.database.url, worker_id=dispatcher.worker_id)
    relay = Relay(dispatcher, bus, wake=hub.wake, channels=hub.workers)
    if shared:  # one worker alone (SQLite) has nobody to tell
        hub.announce_queued = relay.queued
        new_tickets = app.get(admin.NEW_TICKETS)
        if new_tickets is not None:  # the admin page's live lists, whichever worker opened the ticket
            app[admin.OPERATORS].store.on_ticket_opened(
                lambda ticket_id: bus.publish_nowait("tickets", {"id": ticket_id})
            )
            bus.on("tickets", lambda data: new_tickets.opened())
            bus.on_resync(new_tickets.opened)
        for worker in hub.workers.values():
            worker.poll_s = BUS_POLL_S  # a notice wakes it; the poll is for one that was missed

    async def start_delivery(app: web.Application) -> None:
        await bus.start()
        if shared:
            relay.attach()
        await hub.start()

    async def stop_delivery(app: web.Application) -> None:
        try:
            await hub.stop()
        finally:
            await relay.close()
            await bus.close()

    app.on_startup.append(start_delivery)
    app.on_cleanup.append(stop_delivery)
    return app


async def drain(app: web.Application) -> int:
    """Stop taking messages and let running turns finish; returns how many were handed back."""
    app[DRAINING].set()
    grace = app[RUNTIME].config.server.drain_timeout_s
    return await app[DISPATCHER].drain(grace)


async def serve(
    config: Config,
    *,
    host: str | None = None,
    port: int | None = None,
    demo: bool = False,
    ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
    notice: Callable[[str], None] | None = None,
    reload: bool = False,
    reuse_port: bool = False,
) -> None:
    """Run the server until SIGTERM/SIGINT (or ``stop`` is set), then drain and close.

    A SIGHUP reloads the flows and tools (``supportbot.reload``); a turn running meanwhile finishes
    on the version it started with. One that comes while the server starts (systemd's
    ``ExecReload`` right after the start) reloads once it is up; while it shuts down, SIGHUP is
    ignored. Never does one end the process, and what handled SIGHUP before is put back on return.

    Args:
        ready: called with the base URL once the server accepts connections.
        notice: called after ``ready`` with each line the operator should see (``NOTICES``).
        reload: also reload whenever a flow file, a tools module or the config file changes.
        reuse_port: bind with ``SO_REUSEPORT``, sharing the port with the other workers of
            ``serve --workers N`` (``supportbot.supervisor``); responses then name this worker's pid
            in ``X-Supportbot-Worker``.
    """
    # SIGHUP's default is to end the process: from now on it never does.
    early: list[int] = []
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: early.append(signum))
    try:
        await _serve(config, host=host, port=port, demo=demo, ready=ready, stop=stop, notice=notice, reload=reload,
                     reuse_port=reuse_port, early_sighup=early)  # fmt: skip
    finally:
        # Until here asyncio's handler, a harmless one in the end (``_serve``); removing it sets the default.
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        signal.signal(signal.SIGHUP, previous)


async def _serve(
    config: Config,
    *,
    host: str | None,
    port: int | None,
    demo: bool,
    ready: Callable[[str], None] | None,
    stop: asyncio.Event | None,
    notice: Callable[[str], None] | None,
    reload: bool,
    reuse_port: bool,
    early_sighup: list[int],
) -> None:
    runtime = await open_runtime(config, demo=demo)
    try:
        app = build_app(runtime)
        metrics = app[METRICS]

        def count(outcome: Outcome) -> None:
            metrics.reloads.labels("ok" if outcome.ok else "refused").inc()

        reloader = Reloader(runtime, on_outcome=count)
        if reload:
            watched = reloader.watched_files()
            app[NOTICES].append(
                f"watching {len(watched)} file{'' if len(watched) == 1 else 's'} for changes (flows, tools, config): "
                "an edit reloads the flows and tools, a bad one is refused and logged"
                + ("; the built-in example flows are not watched" if reloader.flows_dir is None else "")
            )
        if reuse_port:
            app.on_response_prepare.append(_name_worker)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
        await runner.setup()
        try:
            host = host or config.server.host
            port = config.server.port if port is None else port
            try:
                await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {host}:{port}: {exc.strerror}; choose another port (--port or server.port)"
                ) from None
            url = _base_url(runner)
            stop = stop or asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            reloader.start(watch=reload)
            loop.add_signal_handler(signal.SIGHUP, reloader.request, "on SIGHUP")
            if early_sighup:  # it came while the server started: the files may have changed since they were read
                reloader.request("on SIGHUP")
            log.info("supportbot serving on %s (resumed %d turn(s))", url, app[INTAKE].resumed)
            if ready is not None:
                ready(url)
            if notice is not None:
                for line in app[NOTICES]:
                    notice(line)
            await stop.wait()
            await reloader.aclose()
            log.info("shutting down: letting running turns finish (up to %ss)", config.server.drain_timeout_s)
            handed_back = await drain(app)
            log.info("stopped; %d turn(s) handed back for the next start", handed_back)
        finally:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            # Not removed (that would make SIGHUP end the process) but replaced: ``serve`` removes it on return.
            loop.add_signal_handler(signal.SIGHUP, log.info, "SIGHUP ignored: supportbot is shutting down")
            await reloader.aclose()
            await runner.cleanup()
    finally:
        await runtime.aclose()


async def _name_worker(request: web.Request, response: web.StreamResponse) -> None:
    """Which of the workers sharing the port answered (for load balancer checks and tests)."""
    response.headers["X-Supportbot-Worker"] = str(os.getpid())


def _base_url(runner: web.AppRunner) -> str:
    for address in runner.addresses:
        host, port = address[0], address[1]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"
    return "http://127.0.0.1"  # pragma: no cover - a started site always has an address
