"""The /admin pages over real HTTP: sign-in, sessions, CSRF, escaping, and every operator action."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from supportbot.admin.views import CSP
from supportbot.runtime import open_runtime
from supportbot.server import OPENAPI, build_app
from supportbot.store.base import NewMessage
from supportbot.testing.fake_llm import FakeLLMServer, Reply
from tests.admin.conftest import PASSWORD, TOKEN, csrf_of, sign_in
from tests.connectors.web.conftest import WebServer, write_config

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


async def _ticket_with_payload(server: WebServer) -> tuple[int, str]:
    """A ticket from a real conversation whose customer wrote an XSS payload (the subject too)."""
    store = server.runtime.store
    customer = await store.get_or_create_customer(email="mallory@example.com", name=XSS, verified=True)
    conversation = await store.create_conversation(customer_id=customer.id, channel="web", flow="general")
    await store.add_messages(conversation.id, [NewMessage(role="user", content=f"hello {XSS}")])
    ticket = await store.create_ticket(subject=f"Refund {XSS}", description=XSS, conversation_id=conversation.id,
                                       customer_id=customer.id, channel="web", flow=XSS)  # fmt: skip
    return ticket.id, conversation.id


async def test_pages_need_a_session(server: WebServer) -> None:
    for path in ("/admin/tickets", "/admin/tickets/1", "/admin/conversations", "/admin/overview"):
        async with server.http.get(server.url + path, allow_redirects=False) as response:
            assert response.status == 303, path
            assert response.headers["Location"].startswith("/admin/login?next=")
    async with server.http.post(f"{server.url}/admin/tickets/1/reply", data={"text": "hi"}) as response:
        assert response.status == 401


async def test_signing_in_sets_a_strict_cookie_and_signing_out_ends_the_session(
    server: WebServer, browserish: aiohttp.ClientSession
) -> None:
    response = await sign_in(server, browserish)
    assert response.status == 303 and response.headers["Location"] == "/admin/tickets"
    cookie = response.cookies["sb_admin"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/admin"
    async with browserish.get(f"{server.url}/admin/tickets") as page:
        assert page.status == 200
        assert page.headers["Content-Security-Policy"] == CSP
        assert page.headers["X-Frame-Options"] == "DENY"
        html = await page.text()
    assert "Sign out" in html
    async with browserish.post(f"{server.url}/admin/logout", data={"csrf": csrf_of(html)},
                               allow_redirects=False) as out:  # fmt: skip
        assert out.status == 303
    async with browserish.get(f"{server.url}/admin/tickets", allow_redirects=False) as again:
        assert again.status == 303  # the session row is gone, not only the cookie


async def test_the_admin_token_signs_in_too(server: WebServer, browserish: aiohttp.ClientSession) -> None:
    response = await sign_in(server, browserish, username="dana", password=TOKEN)
    assert response.status == 303
    async with browserish.get(f"{server.url}/admin/tickets") as page:
        assert ">dana<" in await page.text()


async def test_failed_sign_ins_are_throttled(server: WebServer, browserish: aiohttp.ClientSession) -> None:
    for _ in range(3):
        assert (await sign_in(server, browserish, password="wrong password")).status == 401
    refused = await sign_in(server, browserish, password=PASSWORD)  # right, but too late
    assert refused.status == 429 and int(refused.headers["Retry-After"]) > 0


async def test_sign_in_without_the_forms_csrf_cookie_is_refused(server: WebServer) -> None:
    async with server.http.post(
        f"{server.url}/admin/login", data={"csrf": "x", "username": "admin", "password": PASSWORD},
        allow_redirects=False,
    ) as response:  # fmt: skip
        assert response.status == 403
        assert "sb_admin" not in response.cookies


async def test_actions_need_the_sessions_csrf_token_and_this_origin(
    server: WebServer, browserish: aiohttp.ClientSession
) -> None:
    ticket_id, _ = await _ticket_with_payload(server)
    await sign_in(server, browserish)
    url = f"{server.url}/admin/tickets/{ticket_id}/note"
    async with browserish.post(url, data={"text": "no token"}) as response:
        assert response.status == 403
    async with browserish.get(f"{server.url}/admin/tickets/{ticket_id}") as page:
        csrf = csrf_of(await page.text())
    async with browserish.post(url, data={"text": "other site", "csrf": csrf},
                               headers={"Origin": "http://evil.example"}) as response:  # fmt: skip
        assert response.status == 403
    assert [e.action for e in await server.runtime.store.ticket_events(ticket_id)] == ["created"]
    async with browserish.post(url, data={"text": "a real note", "csrf": csrf}) as response:
        assert response.status == 200 and "Note added." in await response.text()
    events = await server.runtime.store.ticket_events(ticket_id)
    assert (events[-1].actor, events[-1].action, events[-1].detail) == ("admin", "note", "a real note")


async def test_customer_text_is_escaped_on_every_page(server: WebServer, browserish: aiohttp.ClientSession) -> None:
    ticket_id, conversation_id = await _ticket_with_payload(server)
    await sign_in(server, browserish)
    for path in (f"/admin/tickets/{ticket_id}", "/admin/tickets", f"/admin/conversations/{conversation_id}",
                 "/admin/conversations", "/admin/overview", "/admin/tickets?q=%3Cscript%3E"):  # fmt: skip
        async with browserish.get(server.url + path) as page:
            html = await page.text()
            assert page.status == 200, path
        assert "<script>alert" not in html and "<img src=x" not in html, path
        assert re.search(r"<script(?! src=\"/admin/static/admin.js\")", html) is None, path
    async with browserish.get(f"{server.url}/admin/tickets/{ticket_id}") as page:
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in await page.text()


async def test_an_operator_replies_changes_the_ticket_and_hands_back(
    server: WebServer, browserish: aiohttp.ClientSession
) -> None:
    store = server.runtime.store
    server.fake.script(Reply(tool_calls=[("handoff_to_human", {"reason": "wants a person"})]), Reply(text="OK."))
    conversation = await server.open()
    await server.ask(conversation, "I want to talk to a person")
    [ticket] = await store.list_tickets(conversation_id=conversation["id"])
    assert (await store.get_conversation(conversation["id"])).status == "human"  # type: ignore[union-attr]

    await sign_in(server, browserish)
    async with browserish.get(f"{server.url}/admin/tickets") as page:
        html = await page.text()
    assert f'href="/admin/tickets/{ticket.id}"' in html
    async with browserish.get(f"{server.url}/admin/tickets/{ticket.id}") as page:
        html = await page.text()
    assert "handoff_to_human" in html and "I want to talk to a person" in html
    csrf = csrf_of(html)

    async def act(action: str, **form: Any) -> str:
        async with browserish.post(f"{server.url}/admin/tickets/{ticket.id}/{action}",
                                   data={"csrf": csrf, **form}) as response:  # fmt: skip
            assert response.status == 200
            return await response.text()

    assert "Reply sent" in await act("reply", text="Hi, this is Dana from support.")
    messages = await store.list_messages(conversation["id"])
    assert (messages[-1].kind, messages[-1].author, messages[-1].content) == (
        "human", "admin", "Hi, this is Dana from support.")  # fmt: skip
    assert "Ticket updated" in await act("update", status="pending", priority="high", assignee="dana")
    assert "The bot answers" in await act("handback")
    assert (await store.get_conversation(conversation["id"])).status == "bot"  # type: ignore[union-attr]
    assert "empty" in await act("reply", text="   ")
    ticket_now = await store.get_ticket(ticket.id)
    assert ticket_now is not None
    assert (ticket_now.status, ticket_now.priority, ticket_now.assignee) == ("pending", "high", "dana")
    actions = [(e.actor, e.action) for e in await store.ticket_events(ticket.id)]
    assert actions[1:] == [("admin", "reply"), ("admin", "status"), ("admin", "priority"), ("admin", "assignee"),
                           ("admin", "handback")]  # fmt: skip
    await act("update", status="closed")
    assert (await store.get_ticket(ticket.id)).status == "closed"  # type: ignore[union-attr]


async def test_the_live_list_returns_only_newer_tickets(server: WebServer, browserish: aiohttp.ClientSession) -> None:
    first, _ = await _ticket_with_payload(server)
    await sign_in(server, browserish)
    async with browserish.get(f"{server.url}/admin/tickets") as page:
        live = re.search(r'data-live="([^"]+)"', await page.text())
    assert live is not None and f"after={first}" in live.group(1)
    second, _ = await _ticket_with_payload(server)
    async with browserish.get(server.url + live.group(1).replace("&amp;", "&")) as response:
        found = (await response.json())["tickets"]
    assert [t["id"] for t in found] == [second]


async def test_filters_and_bad_filter_values(server: WebServer, browserish: aiohttp.ClientSession) -> None:
    ticket_id, _ = await _ticket_with_payload(server)
    await sign_in(server, browserish)
    async with browserish.get(f"{server.url}/admin/tickets?status=closed") as page:
        assert f'href="/admin/tickets/{ticket_id}"' not in await page.text()
    async with browserish.get(f"{server.url}/admin/tickets?status=open&q=refund") as page:
        assert f'href="/admin/tickets/{ticket_id}"' in await page.text()
    async with browserish.get(f"{server.url}/admin/tickets?from=yesterday") as page:
        assert "is not a date" in await page.text()


async def test_after_signing_in_it_only_goes_to_admin_pages(
    server: WebServer, browserish: aiohttp.ClientSession
) -> None:
    cases = [("/admin/overview", "/admin/overview"), ("//evil.example/admin", "/admin/tickets"),
             ("https://evil.example/admin", "/admin/tickets"), ("/elsewhere", "/admin/tickets")]  # fmt: skip
    for target, expected in cases:
        async with browserish.get(f"{server.url}/admin/login") as response:
            token = csrf_of(await response.text())
        form = {"csrf": token, "username": "admin", "password": PASSWORD, "next": target}
        async with browserish.post(f"{server.url}/admin/login", data=form, allow_redirects=False) as response:
            assert response.headers["Location"] == expected, target


async def test_a_crafted_link_cannot_put_words_on_the_page(
    server: WebServer, browserish: aiohttp.ClientSession
) -> None:
    await sign_in(server, browserish)
    async with browserish.get(f"{server.url}/admin/tickets?done=Session+expired%3A+sign+in+at+evil.example") as page:
        assert "evil.example" not in await page.text()


async def test_with_the_admin_off_there_is_no_admin_page_or_api(tmp_path: Path, fake: FakeLLMServer) -> None:
    config = write_config(tmp_path, fake, f"sqlite+aiosqlite:///{tmp_path / 'off.db'}", {"admin": {"enabled": False}})
    runtime = await open_runtime(config)
    try:
        app = build_app(runtime)
        paths = {resource.canonical for resource in app.router.resources()}
        assert not [p for p in paths if p.startswith(("/admin", "/api/v1/admin"))]
        assert not [p for p in app[OPENAPI]["paths"] if p.startswith("/api/v1/admin")]
    finally:
        await runtime.aclose()


async def test_without_an_operator_the_login_page_says_so_as_information(tmp_path: Path, fake: FakeLLMServer) -> None:
    config = write_config(tmp_path, fake, f"sqlite+aiosqlite:///{tmp_path / 'none.db'}", {"admin": {}})
    runtime = await open_runtime(config)
    runner = web.AppRunner(build_app(runtime), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/admin/login") as response:
                html = await response.text()
            async with http.get(f"{url}/admin/static/admin.css") as response:
                css = await response.text()
        notice = re.search(r'<p class="([^"]*)"[^>]*>Signing in needs an operator account', html)
        assert notice is not None and notice.group(1).split() == ["flash", "info"]  # not the success green
        assert re.search(r"\.flash\.info \{[^}]*background:#eff8ff", css)
    finally:
        await runner.cleanup()
        await runtime.aclose()
