"""The web channel: the embeddable chat widget, its demo page, and the conversation REST/SSE API.

``CONNECTOR`` is the ``web`` entry point of ``supportbot.connectors``; ``supportbot serve`` calls its
``setup`` when ``connectors.web.enabled`` is true. Routes (docs/web-protocol.md):

* ``GET /`` the demo shop page, ``GET /favicon.ico``, ``GET /widget.js``, ``GET /widget/config``,
  WebSocket ``/widget/ws``;
* ``POST /api/v1/conversations``, ``GET|POST /api/v1/conversations/{id}/messages``,
  ``GET /api/v1/openapi.json``.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from importlib.resources import files
from typing import Any

from aiohttp import web

from connectors.web import api, ws
from connectors.web.channel import Refused, WebChannel
from connectors.web.openapi import OPENAPI
from connectors.web.security import identity_token, origin_allowed, retry_after
from supportbot.channels import Connector
from supportbot.config import WebSettings
from supportbot.runtime import NO_MODEL
from supportbot.server import DISPATCHER, INTAKE, RUNTIME, add_openapi, error_response

__all__ = ["CHANNEL_KEY", "CONNECTOR", "DEMO_USER", "setup"]

log = logging.getLogger("supportbot.web")

CHANNEL_KEY = web.AppKey("web_channel", WebChannel)
BOOT_PLACEHOLDER = "/*SUPPORTBOT_BOOT*/{}"
DEMO_USER = {"id": "demo-ana", "email": "ana@example.com", "name": "Ana Example"}
"""Who the demo page signs in as under ``--demo``: the owner of the demo orders A1001 and A1002."""
DEMO_TOKEN_LIFETIME_S = 24 * 3600
"""The demo page's identity token is signed afresh for each page load, as a shop's backend would."""

_CORS_PATHS = ("/api/v1/", "/widget/config")
_DEMO_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@functools.cache
def _static(name: str) -> str:
    return files("connectors.web").joinpath("static", name).read_text(encoding="utf-8")


@functools.cache
def _static_bytes(name: str) -> bytes:
    return files("connectors.web").joinpath("static", name).read_bytes()


def setup(app: web.Application, settings: WebSettings) -> WebChannel:
    """Add the web channel's routes to the server's application; returns the channel to deliver to."""
    channel = WebChannel(app[RUNTIME], app[DISPATCHER], app[INTAKE], settings)
    app[CHANNEL_KEY] = channel
    if not channel.runtime.has_model:
        # The how-to is for whoever runs the server; customers read only that the assistant is unavailable.
        log.warning("the widget tells customers the assistant is not available: %s",
                    NO_MODEL.format(base_url=channel.runtime.config.llm.base_url))  # fmt: skip
    app[ws.SOCKETS] = set()
    app.middlewares.append(_cors)
    app.on_shutdown.append(ws.close_all)

    def route(handler: Callable[[web.Request, WebChannel], Awaitable[web.StreamResponse]]) -> Handler:
        return partial(_refusals, handler, channel)

    async def widget(request: web.Request) -> web.Response:
        return web.Response(text=_static("widget.js"), content_type="application/javascript", charset="utf-8",
                            headers={"Cache-Control": "public, max-age=300"})  # fmt: skip

    async def config(request: web.Request) -> web.Response:
        return web.json_response(_widget_config(channel), headers={"Cache-Control": "public, max-age=60"})

    async def demo(request: web.Request) -> web.Response:
        page = _static("demo.html").replace(BOOT_PLACEHOLDER, _boot_options(channel), 1)
        return web.Response(text=page, content_type="text/html", charset="utf-8",
                            headers={"Content-Security-Policy": _DEMO_CSP, "Cache-Control": "no-cache"})  # fmt: skip

    async def favicon(request: web.Request) -> web.Response:
        return web.Response(body=_static_bytes("favicon.ico"), content_type="image/x-icon",
                            headers={"Cache-Control": "public, max-age=86400"})  # fmt: skip

    if channel.settings.demo_page:
        app.router.add_get("/", demo)
    app.router.add_get("/favicon.ico", favicon)  # browsers ask for it on any page of this origin
    app.router.add_get("/widget.js", widget)
    app.router.add_get("/widget/config", config)
    app.router.add_get("/widget/ws", route(ws.websocket))
    app.router.add_post("/api/v1/conversations", route(api.create_conversation))
    app.router.add_get("/api/v1/conversations/{id}/messages", route(api.list_messages))
    app.router.add_post("/api/v1/conversations/{id}/messages", route(api.post_message))
    add_openapi(app, OPENAPI)
    return channel


CONNECTOR = Connector(name="web", settings=WebSettings, setup=setup)


async def _refusals(
    handler: Callable[[web.Request, WebChannel], Awaitable[web.StreamResponse]],
    channel: WebChannel,
    request: web.Request,
) -> web.StreamResponse:
    try:
        return await handler(request, channel)
    except Refused as refused:
        headers = {"Retry-After": retry_after(refused.retry_after)} if refused.retry_after is not None else None
        return error_response(refused.status, refused.code, refused.message, headers=headers)


@web.middleware
async def _cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Cross-origin access for the listed sites: the widget on a shop's page calls this server's API."""
    if not request.path.startswith(_CORS_PATHS):
        return await handler(request)
    channel = request.app[CHANNEL_KEY]
    origin = request.headers.get("Origin")
    if not origin_allowed(request, channel.settings, behind_proxy=channel.behind_proxy):
        channel.count_error("origin_not_allowed")
        # Readable by the refused page (only this error), so the widget can say why instead of retrying.
        return error_response(
            403, "origin_not_allowed",
            f"the origin {origin} may not use this server; add it to connectors.web.allowed_origins in the "
            f"server's config",
            headers={"Access-Control-Allow-Origin": origin or "", "Vary": "Origin"},
        )  # fmt: skip
    if request.method == "OPTIONS" and origin is not None:
        response: web.StreamResponse = web.Response(status=204)
    else:
        response = await handler(request)
    if origin is not None and not response.prepared:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, Accept"
        response.headers["Access-Control-Max-Age"] = "600"
        response.headers["Vary"] = "Origin"
    return response


def _widget_config(channel: WebChannel) -> dict[str, Any]:
    settings = channel.settings
    limits = channel.runtime.config.limits
    company = channel.runtime.config.company.get("name") or "Support"
    return {
        "title": settings.title or f"{company} support",
        "color": settings.color,
        "position": settings.position,
        "greeting": settings.greeting,
        "max_message_chars": limits.max_message_chars,
        "max_image_bytes": limits.max_image_bytes,
        "max_images": limits.max_images_per_message,
    }


def _boot_options(channel: WebChannel) -> str:
    """The demo page's boot options: under ``--demo`` it signs in the demo customer, otherwise none."""
    options: dict[str, Any] = {}
    if channel.demo and channel.identity_secret:
        token = identity_token(channel.identity_secret, DEMO_USER["id"], email=DEMO_USER["email"],
                               name=DEMO_USER["name"], lifetime_s=DEMO_TOKEN_LIFETIME_S)  # fmt: skip
        options["user"] = {"token": token}
    # Safe inside <script>: no "</script>" or "<!--" can be formed.
    return json.dumps(options).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
