"""The operators' admin page (``/admin``) and JSON API (``/api/v1/admin/…``), part of ``supportbot serve``.

``setup`` adds them to the server's application when ``admin.enabled`` and the store keeps
operators (``SQLStore``). Under ``--demo`` with no credentials configured, a token for this run
is made and shown on the console, so the whole path can be tried without any set-up.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import cast

from aiohttp import web

from supportbot.admin.api import AdminAPI
from supportbot.admin.auth import Auth
from supportbot.admin.live import NewTickets
from supportbot.admin.openapi import ADMIN_OPENAPI
from supportbot.admin.views import AdminPages
from supportbot.llm.demo import DemoLLM
from supportbot.operators import Operators, OperatorStore
from supportbot.webapp import INTAKE, NOTICES, RUNTIME, add_openapi

__all__ = ["NEW_TICKETS", "OPERATORS", "setup"]

OPERATORS = web.AppKey("operators", Operators)
NEW_TICKETS = web.AppKey("new_tickets", NewTickets)
"""Wakes the live ticket lists; the server also feeds it what other workers announce over the bus."""
STATIC = Path(__file__).parent / "static"


def setup(app: web.Application) -> None:
    """Add the admin page and its API to the server (operators' replies go out through the server's delivery)."""
    runtime = app[RUNTIME]
    settings = runtime.config.admin
    if not settings.enabled or not hasattr(runtime.store, "search_tickets"):
        return
    store = cast(OperatorStore, runtime.store)
    demo_token = None
    if isinstance(runtime.llm, DemoLLM) and settings.password_hash is None and settings.token is None:
        demo_token = secrets.token_urlsafe(18)
        app[NOTICES].append(f"admin page: /admin, sign in with the token {demo_token} (valid while this server runs)")
    operators = app[INTAKE].operators
    auth = Auth(settings, store, extra_token=demo_token, behind_proxy=runtime.config.server.trust_forwarded_for)
    app[OPERATORS] = operators
    new_tickets = app[NEW_TICKETS] = NewTickets()
    store.on_ticket_opened(new_tickets.opened)

    async def end_live_lists(app: web.Application) -> None:
        new_tickets.close()

    app.on_shutdown.append(end_live_lists)
    AdminPages(auth, operators, flows=lambda: sorted(runtime.flows), new_tickets=new_tickets).add_routes(app.router)
    AdminAPI(auth, operators).add_routes(app.router)
    add_openapi(app, ADMIN_OPENAPI)
    app.router.add_static("/admin/static", STATIC, append_version=False)
