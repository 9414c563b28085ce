"""``FakeSlack``: the HTTP app, token checks, the record of calls, failure injection and the waiting helpers.

Its state and workspace live in ``workspace``, the Web API methods in ``methods``, Socket Mode in
``socket_mode``; this module puts them together behind one aiohttp app on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import aiohttp
from aiohttp import web

from connectors.slack.testing.defaults import (
    DEFAULT_APP_ID,
    DEFAULT_APP_TOKEN,
    DEFAULT_BOT_ID,
    DEFAULT_BOT_TOKEN,
    DEFAULT_BOT_USER_ID,
    DEFAULT_TEAM_ID,
    TIER_LIMITS,
)
from connectors.slack.testing.methods import _WebAPIMethods
from connectors.slack.testing.records import Ack, Call
from connectors.slack.testing.socket_mode import _SocketMode
from connectors.slack.testing.wire import slack_json
from connectors.slack.testing.workspace import _SlackError

_JSON_ARGS = ("attachments", "blocks", "chunks", "loading_messages", "metadata", "prompts")


@dataclass(kw_only=True, slots=True)
class _Failure:
    remaining: int
    status: int
    error: str
    retry_after: int | None


_LOGIN_PAGE = b"<!DOCTYPE html><html><head><title>Slack</title></head><body>Sign in to Slack</body></html>"


class FakeSlack(_WebAPIMethods, _SocketMode):
    """Slack's Web API and Socket Mode for tests and benchmarks, on a free port of 127.0.0.1.

    Args:
        bot_token: the ``xoxb-`` token the Web API accepts.
        app_token: the ``xapp-`` token ``apps.connections.open`` accepts.
        team_id: the workspace id.
        app_id: the app id (``api_app_id`` of events).
        bot_user_id: the bot's user id (``authorizations[0].user_id``).
        bot_id: the bot id (``bot_id`` on the bot's messages).
        stream_ttl: seconds a stream may stay open (Slack ends them after about five minutes).
        tier_limits: enforce ``TIER_LIMITS`` and chat.postMessage's one per second per channel.

    Attributes:
        calls: every Web API call answered, in order.
        acks: Socket Mode acknowledgements, in order.
        envelopes: Socket Mode envelopes pushed, in order.
        ephemerals: ephemeral messages posted (``channel``, ``user``, ``text``, ``blocks``, ``thread_ts``).
        assistant_status: ``(channel, thread_ts) -> status`` (cleared, as Slack does, when the bot replies).
        suggested_prompts: ``(channel, thread_ts or "") -> {"title", "prompts"}``.
        titles: ``(channel, thread_ts) -> title`` of assistant threads.
        downloads: ``(file_id, authorized)`` for each file download attempt.
        connects: Socket Mode connections accepted so far.
    """

    def __init__(
        self,
        *,
        bot_token: str = DEFAULT_BOT_TOKEN,
        app_token: str = DEFAULT_APP_TOKEN,
        team_id: str = DEFAULT_TEAM_ID,
        app_id: str = DEFAULT_APP_ID,
        bot_user_id: str = DEFAULT_BOT_USER_ID,
        bot_id: str = DEFAULT_BOT_ID,
        stream_ttl: float = 300.0,
        tier_limits: bool = False,
    ) -> None:
        if not bot_token.startswith("xoxb-") or not app_token.startswith("xapp-"):
            raise ValueError("FakeSlack: bot_token must start with 'xoxb-' and app_token with 'xapp-', as Slack's do")
        super().__init__(
            bot_token=bot_token,
            app_token=app_token,
            team_id=team_id,
            app_id=app_id,
            bot_user_id=bot_user_id,
            bot_id=bot_id,
            stream_ttl=stream_ttl,
        )
        self.calls: list[Call] = []
        self.downloads: list[tuple[str, bool]] = []
        self._failures: dict[str, deque[_Failure]] = {}
        self._delays: dict[str, float] = {}
        self._drops: dict[str, int] = {}
        self._limits: dict[str, tuple[int, float, bool]] = {}
        self._windows: dict[tuple[str, str], deque[float]] = {}
        self._runner: web.AppRunner | None = None
        self._handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            **self._web_api_methods(),
            "apps.connections.open": self._connections_open,
        }
        self.add_user(bot_user_id, name="supportbot", real_name="Supportbot", is_bot=True)
        if tier_limits:
            for method, per_minute in TIER_LIMITS.items():
                self.limit(method, per_minute)
            self.limit("chat.postMessage", 1, per=1.0, per_channel=True)

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Starts listening on a free port of 127.0.0.1."""
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/api/{method}", self._handle)
        app.router.add_get("/link/", self._socket)
        app.router.add_get("/files-pri/{key}/{name}", self._download)
        app.router.add_get("/files-pri/{key}/download/{name}", self._download)
        app.router.add_get("/", self._sign_in_page)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def close(self) -> None:
        """Closes the Socket Mode connections and stops the server."""
        for ws in list(self._sockets):
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeSlack:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- what a test reads ----------------------------------------------------------------------------------

    def calls_to(self, method: str) -> list[Call]:
        """The calls of one method, in order."""
        return [c for c in self.calls if c.method == method]

    @property
    def connections(self) -> int:
        """Socket Mode connections open now."""
        return len(self._sockets)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109 - how long a test waits
        """Waits until ``predicate()`` holds; it is checked after every call, ack and connection.

        Raises:
            TimeoutError: it did not hold within ``timeout`` seconds.
        """
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(predicate), timeout)
            except TimeoutError:
                raise TimeoutError(f"FakeSlack: the awaited condition did not hold within {timeout}s") from None

    async def wait_calls(self, method: str, count: int = 1, timeout: float = 5.0) -> list[Call]:  # noqa: ASYNC109 - how long a test waits
        """Waits until ``method`` was called ``count`` times (answered, whatever the answer); returns its calls."""
        try:
            await self.wait_until(lambda: len(self.calls_to(method)) >= count, timeout)
        except TimeoutError:
            got = len(self.calls_to(method))
            raise TimeoutError(f"FakeSlack: {method} was called {got} times, not {count}, within {timeout}s") from None
        return self.calls_to(method)

    async def wait_ack(self, envelope_id: str, timeout: float = 5.0) -> Ack:  # noqa: ASYNC109 - how long a test waits
        """Waits for the Socket Mode ack of an envelope."""
        try:
            await self.wait_until(lambda: any(a.envelope_id == envelope_id for a in self.acks), timeout)
        except TimeoutError:
            raise TimeoutError(f"FakeSlack: envelope {envelope_id} was not acknowledged within {timeout}s") from None
        return next(a for a in self.acks if a.envelope_id == envelope_id)

    async def wait_connected(self, count: int = 1, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - how long a test waits
        """Waits until ``count`` Socket Mode connections are open."""
        try:
            await self.wait_until(lambda: len(self._sockets) >= count, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"FakeSlack: {len(self._sockets)} Socket Mode connections, not {count}, within {timeout}s; "
                "is the client started with this fake's api_url and app_token?"
            ) from None

    # -- failure injection -----------------------------------------------------------------------------------

    def fail(
        self,
        method: str,
        times: int = 1,
        *,
        status: int | None = None,
        retry_after: int | None = None,
        error: str | None = None,
    ) -> None:
        """Makes the next ``times`` calls of ``method`` fail (queued after earlier ``fail`` calls).

        ``fail(m, status=429, retry_after=2)`` answers HTTP 429 with ``Retry-After: 2`` and ``ratelimited``;
        ``fail(m, error="channel_not_found")`` answers HTTP 200 ``ok: false``; ``fail(m, status=503)`` answers
        HTTP 503. Failed calls change nothing.
        """
        if times < 1:
            raise ValueError(f"FakeSlack.fail({method!r}): times must be at least 1, got {times}")
        if status is None:
            status = 429 if error is None or retry_after is not None else 200
        if status == 429:
            failure = _Failure(remaining=times, status=429, error=error or "ratelimited", retry_after=retry_after or 1)
        else:
            failure = _Failure(remaining=times, status=status, error=error or "fatal_error", retry_after=retry_after)
        self._failures.setdefault(method, deque()).append(failure)

    def drop(self, method: str, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` take effect, but the connection breaks before the answer
        (the client sees ``ServerDisconnectedError``: it cannot tell whether Slack took the call)."""
        if times < 1:
            raise ValueError(f"FakeSlack.drop({method!r}): times must be at least 1, got {times}")
        self._drops[method] = self._drops.get(method, 0) + times

    def delay(self, method: str, seconds: float) -> None:
        """Holds every call of ``method`` for ``seconds`` before answering it (0 stops)."""
        if seconds > 0:
            self._delays[method] = seconds
        else:
            self._delays.pop(method, None)

    def limit(self, method: str, calls: int, *, per: float = 60.0, per_channel: bool = False) -> None:
        """Answers 429 (with the ``Retry-After`` that frees a slot) to calls beyond ``calls`` per ``per`` seconds.

        ``per_channel`` counts each channel apart (chat.postMessage's limit).
        """
        self._limits[method] = (calls, per, per_channel)

    def stop_stream_by_user(self, channel: str, ts: str) -> None:
        """The person pressed "stop" on a streaming answer: later appends answer ``stopped_by_user``."""
        stream = self._streams.get((channel, ts))
        if stream is None:
            raise ValueError(f"FakeSlack.stop_stream_by_user: no stream at {channel}/{ts}")
        stream.state = "stopped_by_user"

    # -- files -----------------------------------------------------------------------------------------------

    async def _download(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["key"].rpartition("-")[2]
        stored = self._files.get(file_id)
        authorized = request.headers.get("Authorization") == f"Bearer {self.bot_token}"
        self.downloads.append((file_id, authorized))
        await self._notify()
        if stored is None:
            return web.Response(status=404, text="file not found")
        if not authorized:
            # Slack answers a request without the token with a redirect to its sign-in page (an HTML 200).
            raise web.HTTPFound(f"/?redir={quote_plus(request.path)}")
        file, content = stored
        return web.Response(body=content, content_type=file["mimetype"])

    async def _sign_in_page(self, request: web.Request) -> web.Response:
        return web.Response(body=_LOGIN_PAGE, content_type="text/html")

    # -- the Web API ---------------------------------------------------------------------------------------

    @staticmethod
    def _json(body: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
        all_headers = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
        return web.Response(body=slack_json(body), status=status, headers=all_headers)

    async def _params(self, request: web.Request) -> tuple[dict[str, Any], str | None]:
        params: dict[str, Any] = dict(request.query)
        body_token = None
        if request.method == "POST" and request.can_read_body:
            if request.content_type == "application/json":
                try:
                    body = json.loads(await request.read() or b"{}")
                except ValueError:
                    raise _SlackError("invalid_json") from None
                if not isinstance(body, dict):
                    raise _SlackError("invalid_json")
                body.pop("token", None)  # Slack takes a JSON body's token only from the Authorization header
                params.update(body)
            else:
                form = await request.post()
                params.update({k: v for k, v in form.items() if isinstance(v, str)})
                body_token = params.pop("token", None)
        params.pop("token", None)  # a token in the query string is not accepted
        for name in _JSON_ARGS:
            if isinstance(params.get(name), str):
                try:
                    params[name] = json.loads(params[name]) if params[name] else None
                except ValueError:
                    raise _SlackError("invalid_blocks_format" if name == "blocks" else "invalid_arguments") from None
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.startswith("Bearer ") else body_token
        return params, token

    def _check_token(self, method: str, token: str | None) -> None:
        if not token:
            raise _SlackError("not_authed")
        if token not in (self.bot_token, self.app_token):
            raise _SlackError("invalid_auth")
        if (method == "apps.connections.open") != (token == self.app_token):
            raise _SlackError("not_allowed_token_type")

    def _rate_limited(self, method: str, params: Mapping[str, Any]) -> int | None:
        limit = self._limits.get(method)
        if limit is None:
            return None
        calls, per, per_channel = limit
        key = (method, str(params.get("channel") or params.get("channel_id") or "") if per_channel else "")
        window = self._windows.setdefault(key, deque())
        now = time.monotonic()
        while window and window[0] <= now - per:
            window.popleft()
        if len(window) >= calls:
            return max(1, math.ceil(window[0] + per - now))
        window.append(now)
        return None

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        arrived = time.monotonic()
        params: dict[str, Any] = {}
        status, error, response = 200, None, None
        try:
            params, token = await self._params(request)
            if method in self._delays:
                await asyncio.sleep(self._delays[method])
            failures = self._failures.get(method)
            if failures:
                failure = failures[0]
                failure.remaining -= 1
                if failure.remaining <= 0:
                    failures.popleft()
                status, error = failure.status, failure.error
                headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else {}
                response = self._json({"ok": False, "error": failure.error}, status, headers)
            else:
                handler = self._handlers.get(method)
                if handler is None:
                    raise _SlackError("unknown_method", req_method=method)
                self._check_token(method, token)
                retry_after = self._rate_limited(method, params)
                if retry_after is not None:
                    status, error = 429, "ratelimited"
                    response = self._json({"ok": False, "error": "ratelimited"}, 429, {"Retry-After": str(retry_after)})
                else:
                    response = self._json({"ok": True, **handler(params)})
        except _SlackError as failed:
            error = failed.error
            response = self._json({"ok": False, "error": failed.error, **failed.extra})
        call = Call(method=method, params=params, status=status, error=error, at=arrived)
        self.calls.append(call)
        await self._notify()
        if self._drops.get(method):
            self._drops[method] -= 1
            if request.transport is not None:
                request.transport.close()  # the answer never leaves
        return response
