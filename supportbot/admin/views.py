"""The ``/admin`` pages: sign-in, tickets, one ticket with its conversation log, conversations, overview.

Pages are rendered on the server with Jinja (autoescaping on: every customer, model and operator
string is escaped) and sent with a strict Content-Security-Policy: scripts and styles only from
``/admin/static``, no inline code, images only from ``data:`` (customers' screenshots) and self.
Every state change is a POST carrying the session's CSRF token and coming from this origin.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlsplit

import jinja2
from aiohttp import web
from markupsafe import Markup
from multidict import MultiDict

from supportbot._json import dumps_bytes
from supportbot.admin.auth import COOKIE, CSRF_FIELD, CSRF_HEADER, LOGIN_COOKIE, Auth
from supportbot.admin.live import NewTickets
from supportbot.admin.params import (
    CONVERSATION_STATUSES,
    PRIORITIES,
    SORTS,
    STATUSES,
    ParamError,
    conversation_query,
    query_string,
    ticket_query,
)
from supportbot.admin.transcript import arrange, totals
from supportbot.operators import OperatorError, Operators, OperatorStore
from supportbot.pricing import format_usd as _usd
from supportbot.records import ticket_json
from supportbot.store.base import TicketPriority, TicketStatus
from supportbot.store.review import AdminSession
from supportbot.webapp import error_response

__all__ = ["CSP", "AdminPages"]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SessionHandler = Callable[[web.Request, AdminSession], Awaitable[web.StreamResponse]]


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("supportbot.admin", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["qs"] = query_string
    env.globals["usd"] = _usd
    return env


def _filters(request: web.Request) -> MultiDict[str]:
    """The list's filters from the query string, for its links: without an action's result message."""
    return MultiDict((k, v) for k, v in request.query.items() if k not in ("done", "kind", "sig", "page"))


def _flash_signature(session: AdminSession, message: str, kind: str) -> str:
    return hmac.new(session.csrf_token.encode(), f"{kind}:{message}".encode(), hashlib.sha256).hexdigest()[:32]


def _next_path(value: str | None) -> str:
    """Where to go after signing in: only a path under /admin, never another site."""
    if not value:
        return "/admin/tickets"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith("/admin") or value.startswith("//"):
        return "/admin/tickets"
    return value


class AdminPages:
    """Route handlers of the admin page; ``add_routes`` puts them on an application."""

    def __init__(
        self, auth: Auth, operators: Operators, *, flows: Callable[[], list[str]], new_tickets: NewTickets | None = None
    ) -> None:
        """``flows`` gives the names of the flows loaded now (a reload may change them); ``new_tickets`` wakes the
        live lists (without it they read every ``HEARTBEAT_S`` seconds)."""
        self.auth = auth
        self.operators = operators
        self.store: OperatorStore = operators.store
        self.flows = flows
        self.new_tickets = new_tickets or NewTickets()
        self.env = _env()

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/admin", self.home)
        router.add_get("/admin/", self.home)
        router.add_get("/admin/login", self.login_form)
        router.add_post("/admin/login", self.login)
        router.add_post("/admin/logout", self.page(self.logout, post=True))
        router.add_get("/admin/tickets", self.page(self.tickets))
        router.add_get("/admin/tickets/live", self.page(self.tickets_live))
        router.add_get("/admin/tickets/stream", self.page(self.tickets_stream))
        router.add_get(r"/admin/tickets/{id:\d+}", self.page(self.ticket))
        for action in ("reply", "note", "update", "handback"):
            router.add_post(rf"/admin/tickets/{{id:\d+}}/{action}", self.page(self.ticket_action, post=True))
        router.add_get("/admin/conversations", self.page(self.conversations))
        router.add_get(r"/admin/conversations/{id:[A-Za-z0-9_-]+}", self.page(self.conversation))
        for action in ("reply", "handback"):
            router.add_post(
                rf"/admin/conversations/{{id:[A-Za-z0-9_-]+}}/{action}", self.page(self.conversation_action, post=True)
            )
        router.add_get("/admin/overview", self.page(self.overview))

    # -- plumbing ----------------------------------------------------------------------------------

    def render(self, name: str, status: int = 200, **context: Any) -> web.Response:
        context.setdefault("session", None)
        context.setdefault("flash", None)
        context.setdefault("flash_kind", None)
        context.setdefault("section", None)
        body = self.env.get_template(name).render(**context)
        return web.Response(text=body, status=status, content_type="text/html", headers=_HEADERS)

    def error(self, status: int, title: str, message: str, session: AdminSession | None = None) -> web.Response:
        return self.render("error.html", status=status, title=title, message=message, session=session)

    def page(self, handler: SessionHandler, *, post: bool = False) -> Handler:
        """Require a session (else the sign-in page); for a POST also this origin and the session's CSRF token."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            session = await self.auth.session(request)
            if session is None:
                if post or request.path.endswith(("/live", "/stream")):
                    return self.error(401, "Signed out", "Your session has ended; sign in again.")
                raise web.HTTPSeeOther(f"/admin/login?{query_string({}, next=request.path_qs)}", headers=_HEADERS)
            if post:
                form = await request.post()
                given = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
                if not self.auth.same_origin(request) or not Auth.csrf_ok(
                    session, given if isinstance(given, str) else None
                ):
                    return self.error(
                        403, "Refused", "This form is out of date or came from another site; reload the page.", session
                    )
            return await handler(request, session)

        return guarded

    @staticmethod
    def _back(session: AdminSession, path: str, message: str, kind: str = "ok") -> web.HTTPSeeOther:
        """Redirect after a POST, carrying the result to show (signed, so a crafted link cannot put words there)."""
        sig = _flash_signature(session, message, kind)
        return web.HTTPSeeOther(f"{path}?{query_string({}, done=message, kind=kind, sig=sig)}", headers=_HEADERS)

    @staticmethod
    def _flash(request: web.Request, session: AdminSession) -> dict[str, Any]:
        done, kind, sig = (request.query.get(k, "") for k in ("done", "kind", "sig"))
        if (
            not done
            or kind not in ("ok", "error")
            or not hmac.compare_digest(sig, _flash_signature(session, done, kind))
        ):
            return {"flash": None, "flash_kind": None}
        return {"flash": done, "flash_kind": kind}

    # -- sign-in -----------------------------------------------------------------------------------

    async def home(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther("/admin/tickets")

    async def _can_sign_in(self) -> bool:
        settings = self.auth.settings
        # Operators made with set-password may have any name; "admin" is the usual one.
        return bool(settings.password_hash or self.auth.api_enabled or await self.store.operator_password_hash("admin"))

    async def login_form(self, request: web.Request, *, error: str | None = None, status: int = 200,
                         username: str | None = None) -> web.Response:  # fmt: skip
        token = secrets.token_urlsafe(24)
        response = self.render(
            "login.html", status=status, error=error, login_csrf=token, username=username,
            next=_next_path(request.query.get("next")), can_sign_in=await self._can_sign_in(),
        )  # fmt: skip
        self.auth.set_cookie(response, request, LOGIN_COOKIE, token, max_age=3600)
        return response

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        client = self.auth.client(request)
        username = str(form.get("username", "")).strip()
        if len(username) > 100 or not username.isprintable():
            return await self.login_form(request, error="A name is up to 100 printable characters.", status=400)
        given, expected = form.get(CSRF_FIELD), request.cookies.get(LOGIN_COOKIE)
        if not self.auth.same_origin(request) or not isinstance(given, str) or not expected or given != expected:
            return await self.login_form(request, error="The sign-in form expired; try again.", status=403)
        wait = self.auth.throttle.retry_after(client)
        if wait:
            response = await self.login_form(
                request, status=429, username=username,
                error=f"Too many failed sign-ins from your address; try again in {wait // 60 + 1} minute(s).",
            )  # fmt: skip
            response.headers["Retry-After"] = str(wait)
            return response
        password = str(form.get("password", ""))
        who = await self.auth.check_login(username, password) if password else None
        if who is None:
            self.auth.throttle.failed(client)
            return await self.login_form(request, error="Wrong name or password.", status=401, username=username)
        self.auth.throttle.succeeded(client)
        secret, _ = await self.auth.start_session(who)
        response = web.HTTPSeeOther(_next_path(str(form.get("next", "")) or None), headers=_HEADERS)
        self.auth.set_cookie(response, request, COOKIE, secret, max_age=int(self.auth.settings.session_hours * 3600))
        response.del_cookie(LOGIN_COOKIE, path="/admin")
        raise response

    async def logout(self, request: web.Request, session: AdminSession) -> web.StreamResponse:
        await self.auth.end_session(request)
        response = web.HTTPSeeOther("/admin/login", headers=_HEADERS)
        response.del_cookie(COOKIE, path="/admin")
        raise response

    # -- tickets -----------------------------------------------------------------------------------

    def _choices(self) -> dict[str, Any]:
        return {
            "statuses": STATUSES, "priorities": PRIORITIES, "sorts": SORTS, "flows": self.flows(),
            "channels": ("web", "terminal", "slack", "email"),
        }  # fmt: skip

    async def tickets(self, request: web.Request, session: AdminSession) -> web.StreamResponse:
        try:
            query = ticket_query(request.query)
        except ParamError as exc:
            raise self._back(session, "/admin/tickets", str(exc), "error") from None
        found = await self.store.search_tickets(query)
        page_number = query.offset // query.limit + 1
        # New tickets appear on the first page of the newest-first list without a reload.
        live = page_number == 1 and query.sort in ("created", "id") and query.descending
        latest = max((t.id for t in found.tickets), default=0)
        return self.render(
            "tickets.html", session=session, section="tickets", query=query, page=found, page_number=page_number,
            params=_filters(request), live=live, latest=latest, **self._choices(), **self._flash(request, session),
        )  # fmt: skip

    async def tickets_live(self, request: web.Request, session: AdminSession) -> web.StreamResponse:
        try:
            query = ticket_query(request.query)
        except ParamError as exc:
            return error_response(400, "bad_parameter", str(exc))
        found = await self.store.search_tickets(query)
        return web.json_response({"tickets": [ticket_json(t) for t in found.tickets]}, headers=_HEADERS)

    async def tickets_stream(self, request: web.Request, session: AdminSession) -> web.StreamResponse:
        """The live list as server-sent events: ``tickets`` with the tickets above ``after`` as they are opened
        (``{"tickets": [...]}``, newest first), ``signed-out`` when the session ended; comments in between."""
        try:
            query = ticket_query(request.query)
        except ParamError as exc:
            return error_response(400, "bad_parameter", str(exc))
        response = web.StreamResponse(headers={
            **_HEADERS, "Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no",
        })  # fmt: skip
        await response.prepare(request)
        new = self.new_tickets
        # Oldest first, a page at a time, so that a burst of more tickets than a page holds reaches the list whole.
        query = dataclasses.replace(query, sort="id", descending=False, offset=0, after_id=query.after_id or 0)
        while not new.closed and request.transport is not None and not request.transport.is_closing():
            seen = new.count
            if await self.auth.session(request) is None:
                await response.write(b"event: signed-out\ndata: {}\n\n")
                break
            found = (await self.store.search_tickets(query)).tickets
            if found:
                query = dataclasses.replace(query, after_id=found[-1].id)
                data = dumps_bytes({"tickets": [ticket_json(t) for t in reversed(found)]})  # newest first, as listed
                await response.write(b"event: tickets\ndata: " + data + b"\n\n")
                if len(found) == query.limit:
                    continue  # more wait beyond this page
            else:
                await response.write(b": waiting for new tickets\n\n")
            await new.wait(seen)
        return response

    async def ticket(self, request: web.Request, session: AdminSession) -> web.StreamResponse:
        ticket = await self.store.get_ticket(int(request.match_info["id"]))
        if ticket is None:
            return self.error(404, "No such ticket", f"There is no ticket #{request.match_info['id']}.", session)
        events = await self.store.ticket_events(ticket.id)
        conversation = customer = None
        messages = []
        if ticket.conversation_id:
            conversation = await self.store.get_conversation(ticket.conversation_id)
            messages = await self.store.list_messages(ticket.conversation_id)
        if ticket.customer_id:
            customer = await self.store.get_customer(ticket.customer_id)
        return self.render(
            "ticket.html", session=session, section="tickets", ticket=ticket, events=events, customer=customer,
            conversation=conversation, entries=arrange(messages), totals=totals(messages),
            statuses=STATUSES, priorities=PRIORITIES, **self._flash(request, session),
        )  # fmt: skip

    async def ticket_action(self, request: web.Request, session: AdminSession) -> web.StreamResponse:
        ticket_id = int(request.match_info["id"])
        action = request.path.rsplit("/", 1)[1]
        form = await request.post()
        here = f"/admin/tickets/{ticket_id}"
        try:
            if action == "reply":
                await self.operators.reply(actor=session.username, text=str(form.get("text", "")), ticket_id=ticket_id)
                raise self._back(session, here, "Reply sent to the customer.")
            if action == "note":
                await self.operators.note(ticket_id, actor=session.username, text=str(form.get("text", "")))
                raise self._back(session, here, "Note added.")
            if action == "handback":
                await self.operators.hand_back(actor=session.username, ticket_id=ticket_id)
                raise self._back(session, here, "The bot answers this customer again.")
            status, priority = form.get("status"), form.get("priority")
            if (status is not None and status not in STATUSES) or (priority is not None and priority not in PRIORITIES):
                raise self._back(session, here, "Choose a status and a priority from the lists.", "error")
            assignee = form.get("assignee")
            await self.operators.update(
                ticket_id, actor=session.username, status=cast(TicketStatus | None, status),
                priority=cast(TicketPriority | None, priority),
                assignee=str(assignee)[:100] if isinstance(assignee, str) else None,
            )  # fmt: skip
            raise self._back(session, here, "Ticket updated.")
        except OperatorError as exc:
            raise self._back(session, here, str(exc), "error") from None

    # -- conversations -----------------------------------------------------------------------------

    async def conversations(self, request: web.Request, session: AdminSession) -> web.StreamResponse:
        try:
            query = conversation_query(request.query)
        except ParamError as exc:
            raise self._back(session, "/admin/conversations", str(exc), "error") from None
        found = await self.store.search_conversations(query)
        return self.render(
            "conversations.html", session=session, section="conversations", query=query, page=found,
            page_number=query.offset // query.limit + 1, params=_filters(request), statuses=CONVERSATION_STATUSES,
            flows=self.flows(), channels=("web", "terminal", "slack", "email"), **self._flash(request, session),
        )  # fmt: skip

    async def conversation(self, request: web.Request, session: AdminSession) -> web.StreamResponse:
        conversation = await self.store.get_conversation(request.match_info["id"])
        if conversation is None:
            return self.error(404, "No such conversation", "There is no conversation with this id.", session)
        messages = await self.store.list_messages(conversation.id)
        return self.render(
            "conversation.html", session=session, section="conversations", conversation=conversation,
            customer=await self.store.get_customer(conversation.customer_id),
            tickets=await self.store.list_tickets(conversation_id=conversation.id),
            entries=arrange(messages), totals=totals(messages), **self._flash(request, session),
        )  # fmt: skip

    async def conversation_action(self, request: web.Request, session: AdminSession) -> web.StreamResponse:
        conversation_id = request.match_info["id"]
        here = f"/admin/conversations/{conversation_id}"
        form = await request.post()
        try:
            if request.path.endswith("/reply"):
                await self.operators.reply(
                    actor=session.username, text=str(form.get("text", "")), conversation_id=conversation_id
                )
                raise self._back(session, here, "Reply sent to the customer.")
            await self.operators.hand_back(actor=session.username, conversation_id=conversation_id)
            raise self._back(session, here, "The bot answers this customer again.")
        except OperatorError as exc:
            raise self._back(session, here, str(exc), "error") from None

    # -- overview ----------------------------------------------------------------------------------

    async def overview(self, request: web.Request, session: AdminSession) -> web.StreamResponse:
        from supportbot.admin import charts

        overview = await self.store.overview(days=14, now=datetime.now(UTC))

        def day(d: Any) -> str:
            return str(d.strftime("%b %d"))

        drawn = {
            "tickets": charts.multi_bar_chart(
                [day(d) for d, _ in overview.opened_per_day],
                [("opened", [float(n) for _, n in overview.opened_per_day]),
                 ("solved or closed", [float(n) for _, n in overview.solved_per_day])],
                title="Tickets opened and solved per day",
            ),
            "age": charts.hbar_chart([(label, float(n)) for label, n in overview.open_by_age],
                                     title="Open and pending tickets by age"),
            "cost_day": charts.bar_chart([(day(d), c) for d, c in overview.cost_per_day], title="Cost per day (USD)",
                                         value_format=_usd),
            "cost_flow": charts.hbar_chart(overview.cost_per_flow, title="Cost per flow (USD)", value_format=_usd),
        }  # fmt: skip
        return self.render(
            "overview.html", session=session, section="overview", overview=overview,
            total_cost=sum(c for _, c in overview.cost_per_day),
            charts={k: Markup(v) for k, v in drawn.items()},  # the charts module escapes every label
        )  # fmt: skip
