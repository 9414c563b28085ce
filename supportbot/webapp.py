"""The server application's shared parts: its typed keys and the helpers its components use.

``supportbot.server`` builds the application; the admin page and the connectors add their routes
to it. They all import these names from here (``supportbot.server`` re-exports them), so that
no component imports the module that mounts it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from supportbot.config import LimitSettings
from supportbot.delivery import Hub
from supportbot.dispatch import Dispatcher
from supportbot.metrics import Metrics
from supportbot.runtime import Runtime

__all__ = [
    "DISPATCHER",
    "DRAINING",
    "INTAKE",
    "METRICS",
    "NOTICES",
    "OPENAPI",
    "RUNTIME",
    "add_openapi",
    "client_ip",
    "error_response",
    "max_message_bytes",
    "public_origin",
]

RUNTIME = web.AppKey("runtime", Runtime)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
METRICS = web.AppKey("metrics", Metrics)
DRAINING = web.AppKey("draining", asyncio.Event)
OPENAPI = web.AppKey("openapi", dict[str, Any])
"""The OpenAPI 3.1 document served at ``/api/v1/openapi.json``; components add theirs with ``add_openapi``."""
NOTICES = web.AppKey("notices", list[str])
"""Lines for the operator's console when the server starts (e.g. the admin page's demo token)."""
INTAKE = web.AppKey("intake", Hub)
"""The connectors' ``supportbot.channels.Intake`` (and every channel's delivery)."""


def client_ip(request: web.Request, *, behind_proxy: bool) -> str:
    """The client's address: the peer, or behind a trusted proxy (``server.trust_forwarded_for``) the
    address that proxy saw, the last of ``X-Forwarded-For``.

    The last, not the first: a proxy that appends (nginx's ``$proxy_add_x_forwarded_for``) keeps
    whatever the client sent in front of it, so only the entry the proxy added can be trusted.
    """
    if behind_proxy:
        last = request.headers.get("X-Forwarded-For", "").split(",")[-1].strip()
        if last:
            return last
    return request.remote or "unknown"


def public_origin(request: web.Request, *, behind_proxy: bool) -> str:
    """``scheme://host`` of this server as the browser sees it: behind a trusted proxy, ``X-Forwarded-Proto``
    says whether that is https (the proxy ends TLS and speaks http to us)."""
    scheme = request.scheme
    if behind_proxy:
        forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        scheme = forwarded if forwarded in ("http", "https") else scheme
    return f"{scheme}://{request.host}".lower()


def error_response(status: int, code: str, message: str, *, headers: dict[str, str] | None = None) -> web.Response:
    """The JSON error every refused request gets: ``{"error": {"code", "message"}}``."""
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


def add_openapi(app: web.Application, part: dict[str, Any]) -> None:
    """Merge a component's OpenAPI ``paths``, ``components`` and description into the served document."""
    document = app[OPENAPI]
    document["paths"].update(part.get("paths", {}))
    for kind, entries in part.get("components", {}).items():
        document["components"].setdefault(kind, {}).update(entries)
    description = part.get("info", {}).get("description")
    if description:
        info = document["info"]
        info["description"] = f"{info['description']}\n\n{description}".strip()


# What one code point of text can take on the wire: a character outside the BMP written as a JSON
# escape is a surrogate pair, "\ud83d\ude00", 12 bytes (a BMP one escaped is 6, \u and four hex digits; raw UTF-8 at
# most 4). Browsers send raw UTF-8, but any JSON encoder may escape, so a valid text must always fit.
_TEXT_BYTES_PER_CHAR = 12
# Per image: the JSON around its data URL, {"url":"data:image/jpeg;base64,"}, and a comma (35 bytes).
_IMAGE_FRAMING = 64
# The keys, a client_message_id (at most 100 ASCII characters), "type":"message" on the WebSocket
# and a client's indentation.
_BODY_MARGIN = 4096


def max_message_bytes(limits: LimitSettings) -> int:
    """The largest body (HTTP) or frame (WebSocket) a valid customer message can need, plus a small margin.

    A bigger one is refused (413, or the WebSocket closed with 1009) before it is read to the end and
    parsed. The text counts at ``_TEXT_BYTES_PER_CHAR`` bytes per character (JSON escapes, see there);
    each image at its base64 size as the image check counts it (3 bytes per 4 characters, so at most
    ``max_image_bytes * 4 / 3`` characters, which JSON writes unescaped: base64 is ASCII without '"'
    or '\\'; an encoder that writes '/' as '\\/', as PHP's json_encode does by default, must be told
    not to, JSON_UNESCAPED_SLASHES).
    """
    image = limits.max_image_bytes * 4 // 3 + 4 + _IMAGE_FRAMING
    return limits.max_images_per_message * image + limits.max_message_chars * _TEXT_BYTES_PER_CHAR + _BODY_MARGIN
