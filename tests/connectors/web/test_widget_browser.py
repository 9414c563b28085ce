"""The widget in a real browser: Debian's Chromium driven by Playwright, against a real server.

Each test serves a host page from another origin (a shop embedding the widget, listed in
``allowed_origins``) or uses the server's own demo page. The screenshot of the demo page with a
finished conversation is saved to ``test-artifacts/widget-demo.png``.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, expect

from connectors.web.security import identity_token
from supportbot.errors import StorageError
from supportbot.server import INTAKE
from supportbot.testing.fake_llm import Reply, Step
from tests.conftest import ARTIFACTS, require_chromium
from tests.connectors.web.conftest import SECRET, WebServer, signed

require_chromium()


@pytest.fixture
def host_socket() -> Iterator[socket.socket]:
    """The embedding site's socket, bound first so its origin can be allowed in the server's config."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


@pytest.fixture
def settings(host_socket: socket.socket) -> dict[str, Any]:
    return {"web": {"allowed_origins": [f"http://127.0.0.1:{host_socket.getsockname()[1]}"]}}


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1200, "height": 800})
    opened = await context.new_page()
    dialogs: list[str] = []
    opened.on("dialog", lambda dialog: dialogs.append(dialog.message))
    opened.dialogs = dialogs  # type: ignore[attr-defined]
    yield opened
    await context.close()


def host_html(server: WebServer, boot: dict[str, Any]) -> str:
    return f"""<!doctype html><html><head><title>Another shop</title>
<style>button {{ background: red !important; font-size: 40px !important; }} * {{ color: purple; }}</style></head>
<body><h1>Another shop</h1>
<script>window.Supportbot=window.Supportbot||function(){{(Supportbot.q=Supportbot.q||[]).push(arguments)}};
Supportbot('boot', {json.dumps(boot)});</script>
<script async src="{server.url}/widget.js" data-title="Shop help" data-color="#1d4ed8"></script>
</body></html>"""


@pytest.fixture
async def host(server: WebServer, host_socket: socket.socket) -> AsyncIterator[dict[str, Any]]:
    """Another site embedding the widget; ``boot`` sets the options its page boots with."""
    state: dict[str, Any] = {"boot": {}}

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=host_html(server, state["boot"]), content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.SockSite(runner, host_socket).start()
    state["url"] = f"http://127.0.0.1:{host_socket.getsockname()[1]}/"
    yield state
    await runner.cleanup()


async def open_widget(page: Page) -> None:
    launcher = page.locator("#supportbot-widget .sb-launcher")
    await launcher.click()
    await expect(page.locator("#supportbot-widget")).to_have_attribute("data-state", "ready", timeout=10_000)


async def send(page: Page, text: str) -> None:
    box = page.locator("#supportbot-widget textarea.sb-input")
    await box.fill(text)
    await box.press("Enter")


def bot_messages(page: Page) -> Any:
    return page.locator('#supportbot-widget .sb-msg[data-role="bot"]:not(.sb-streaming)')


def order_responder(body: dict[str, Any]) -> Step:
    """A model that looks up the order it is asked about and reports what the tool returned."""
    last = body["messages"][-1]
    if last["role"] == "tool" and last.get("name") == "lookup_order":
        result = last["content"]
        try:
            order = json.loads(result)
        except ValueError:
            return Reply(text=f"I couldn't see that order: {result}")
        return Reply(text=f"Your order **{order['order_id']}** is {order['status']}, arriving {order['eta']}.")
    tools = {t["function"]["name"] for t in body.get("tools", ())}
    if "lookup_order" not in tools:  # the general flow: over to the order flow first
        return Reply(tool_calls=[("transfer_to_order_status", {"reason": "order question"})])
    return Reply(tool_calls=[("lookup_order", {"order_id": "A1001"})])


async def test_a_signed_in_customer_chats_and_sees_a_tool_result_stream_in(
    page: Page, server: WebServer, host: dict[str, Any]
) -> None:
    server.fake.token_delay = 0.03
    server.fake.responder = order_responder
    host["boot"] = {"user": signed("42", "ana@example.com")}
    await page.goto(host["url"])
    await open_widget(page)
    await send(page, "Where is my order A1001?")
    streaming = page.locator("#supportbot-widget .sb-streaming")
    await expect(streaming).to_have_count(1, timeout=10_000)  # the reply streams in
    await expect(bot_messages(page).last).to_contain_text("A1001 is shipped, arriving 2026-11-25", timeout=10_000)
    await expect(streaming).to_have_count(0)
    assert await page.locator("#supportbot-widget .sb-msg strong").last.text_content() == "A1001"
    # The host page's CSS does not reach into the widget.
    color = await page.locator("#supportbot-widget button.sb-send").evaluate("b => getComputedStyle(b).backgroundColor")
    assert color != "rgb(255, 0, 0)"
    assert page.dialogs == []  # type: ignore[attr-defined]


async def test_a_reload_shows_the_history_again_without_duplicates(
    page: Page, server: WebServer, host: dict[str, Any]
) -> None:
    server.fake.script(Reply(text="First answer."), Reply(text="Second answer."))
    await page.goto(host["url"])
    await open_widget(page)
    await send(page, "first question")
    await expect(bot_messages(page).last).to_have_text("First answer.", timeout=10_000)
    await send(page, "second question")
    await expect(bot_messages(page).last).to_have_text("Second answer.", timeout=10_000)
    before = await page.locator("#supportbot-widget .sb-msg").all_text_contents()
    await page.reload()
    await open_widget(page)
    await expect(bot_messages(page).last).to_have_text("Second answer.", timeout=10_000)
    after = await page.locator("#supportbot-widget .sb-msg").all_text_contents()
    assert [t for t in after if "question" in t or "answer" in t] == [
        t for t in before if "question" in t or "answer" in t
    ]
    assert sum("Second answer." in t for t in after) == 1


async def test_markup_in_messages_renders_inert(page: Page, server: WebServer, host: dict[str, Any]) -> None:
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    server.fake.script(
        Reply(text="Here: [click me](javascript:alert(1)) and <img src=x onerror=alert(2)> and "
                   "![pic](http://127.0.0.1:9/tracker.png) and [help](https://acme.example/help)")
    )  # fmt: skip
    await page.goto(host["url"])
    await open_widget(page)
    await send(page, "<img src=x onerror=alert(1)> <script>alert(3)</script>")
    await expect(bot_messages(page).last).to_contain_text("click me", timeout=10_000)
    widget = page.locator("#supportbot-widget")
    customer = widget.locator('.sb-msg[data-role="customer"]').last
    await expect(customer).to_contain_text("<img src=x onerror=alert(1)>")  # shown as text
    hrefs = await widget.locator(".sb-msg a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert "https://acme.example/help" in hrefs
    assert all(href.startswith(("https://", "http://")) for href in hrefs)  # no javascript: link
    sources = await widget.locator(".sb-msg img").evaluate_all("imgs => imgs.map(i => i.getAttribute('src'))")
    assert all(src.startswith(("data:", "blob:")) for src in sources)
    assert not any("tracker.png" in url or url.endswith("/x") for url in requests)
    assert page.dialogs == []  # type: ignore[attr-defined]


async def test_a_wrong_stored_token_is_dropped_for_a_new_conversation(
    page: Page, server: WebServer, host: dict[str, Any]
) -> None:
    server.fake.script(Reply(text="Fresh start."))
    await page.goto(host["url"])
    key = f"supportbot:{server.url}"
    await page.evaluate(
        "([k, v]) => localStorage.setItem(k, v)",
        [key, json.dumps({"id": "0" * 32, "token": "forged-token", "userKey": ""})],
    )
    await page.reload()
    await open_widget(page)
    await send(page, "hello")
    await expect(bot_messages(page).last).to_have_text("Fresh start.", timeout=10_000)
    stored = json.loads(await page.evaluate("k => localStorage.getItem(k)", key))
    assert stored["token"] != "forged-token"


async def test_a_site_that_is_not_allowed_is_refused(page: Page, server: WebServer, host: dict[str, Any]) -> None:
    other = host["url"].replace("127.0.0.1", "localhost")  # same page, an origin the server does not list
    await page.goto(other)
    await page.locator("#supportbot-widget .sb-launcher").click()
    await expect(page.locator("#supportbot-widget .sb-error")).to_be_visible(timeout=10_000)
    assert server.fake.request_count == 0


async def test_keyboard_and_accessibility(page: Page, server: WebServer, host: dict[str, Any]) -> None:
    server.fake.script(Reply(text="Got both lines."))
    await page.goto(host["url"])
    launcher = page.locator("#supportbot-widget .sb-launcher")
    await expect(launcher).to_have_attribute("aria-expanded", "false")
    assert await launcher.get_attribute("aria-label")
    await open_widget(page)
    await expect(launcher).to_have_attribute("aria-expanded", "true")
    panel = page.locator("#supportbot-widget .sb-panel")
    await expect(panel).to_have_attribute("role", "dialog")
    await expect(page.locator("#supportbot-widget .sb-log")).to_have_attribute("role", "log")
    box = page.locator("#supportbot-widget textarea.sb-input")
    await expect(box).to_be_focused()
    await box.type("line one")
    await box.press("Shift+Enter")
    await box.type("line two")
    assert await box.input_value() == "line one\nline two"
    await box.press("Enter")
    await expect(bot_messages(page).last).to_have_text("Got both lines.", timeout=10_000)
    assert server.fake.requests[0].body["messages"][-1]["content"] == "line one\nline two"
    await box.press("Escape")
    await expect(panel).to_be_hidden()
    await expect(launcher).to_be_focused()


async def test_an_attached_image_reaches_the_model(
    page: Page, server: WebServer, host: dict[str, Any], tmp_path: Path
) -> None:
    server.fake.script(Reply(text="That is error 42."))
    png = tmp_path / "error.png"
    png.write_bytes(base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    ))  # fmt: skip
    await page.goto(host["url"])
    await open_widget(page)
    await page.locator("#supportbot-widget input.sb-file").set_input_files(str(png))
    await send(page, "what does this mean?")
    await expect(bot_messages(page).last).to_have_text("That is error 42.", timeout=10_000)
    content = server.fake.requests[0].body["messages"][-1]["content"]
    assert any(part["type"] == "image_url" and part["image_url"]["url"].startswith("data:image/png;base64,")
               for part in content)  # fmt: skip


async def test_a_handoff_shows_one_message_live_and_after_a_reload_and_the_persons_reply(
    page: Page, server: WebServer, host: dict[str, Any]
) -> None:
    server.fake.script(
        Reply(tool_calls=[("handoff_to_human", {"reason": "wants a person"})]),
        Reply(text="I've passed you to a colleague; a person will reply here."),
    )
    await page.goto(host["url"])
    await open_widget(page)
    await send(page, "a person please")
    replies = page.locator('#supportbot-widget .sb-msg:not([data-role="customer"]):not(.sb-intro)')
    expected = ["Hi there! I'm the Acme Outdoor support assistant. How can I help you today?",
                "I've passed you to a colleague; a person will reply here."]  # fmt: skip
    await expect(replies).to_have_text(expected, timeout=10_000)  # the reply, and no second notice beside it
    await expect(page.locator("#supportbot-widget .sb-sub")).to_have_text("Our team will reply here")
    await page.reload()
    await open_widget(page)
    await expect(replies).to_have_text(expected, timeout=10_000)  # the same after a reload
    await expect(page.locator("#supportbot-widget .sb-sub")).to_have_text("Our team will reply here")
    # An operator answers (as the admin reply of the operators' page will): stored, then delivered.
    conversation = (await server.runtime.store.list_conversations(limit=1))[0]
    await server.app[INTAKE].operators.reply(actor="maria", text="Hi, Maria here. Let me check.",
                                            conversation_id=conversation.id)  # fmt: skip
    human = page.locator('#supportbot-widget .sb-msg[data-role="human"]')
    await expect(human.last).to_contain_text("Maria here", timeout=10_000)
    await page.reload()  # and it is part of the history
    await open_widget(page)
    await expect(human.last).to_contain_text("Maria here", timeout=10_000)


async def test_a_confirmation_offers_yes_and_no_and_yes_opens_the_ticket(
    page: Page, server: WebServer, host: dict[str, Any]
) -> None:
    call = {"subject": "Broken tent pole", "description": "The pole snapped on the first night."}
    server.fake.script(Reply(tool_calls=[("create_ticket", call)]), Reply(text="Your ticket is open."))
    await page.goto(host["url"])
    await open_widget(page)
    await send(page, "my tent pole broke, please open a ticket")
    question = bot_messages(page).last
    await expect(question).to_contain_text("Shall I open a ticket “Broken tent pole” for the team?", timeout=10_000)
    buttons = question.locator(".sb-quick button")
    await expect(buttons).to_have_text(["Yes", "No"])
    await page.reload()  # the question is still open after a reload: its buttons too
    await open_widget(page)
    await expect(bot_messages(page).last.locator(".sb-quick button")).to_have_text(["Yes", "No"], timeout=10_000)
    draft = page.locator("#supportbot-widget textarea.sb-input")
    await draft.fill("half-typed")
    await bot_messages(page).last.get_by_role("button", name="Yes").click()
    await expect(page.locator('#supportbot-widget .sb-msg[data-role="customer"]').last).to_have_text("Yes")
    await expect(page.locator("#supportbot-widget .sb-quick")).to_have_count(0)  # answered: the buttons go
    await expect(draft).to_have_value("half-typed")  # what the customer was typing stays
    await expect(bot_messages(page).last).to_have_text("Your ticket is open.", timeout=10_000)
    tickets = await server.runtime.store.list_tickets()
    assert [(t.subject, t.kind) for t in tickets] == [("Broken tent pole", "request")]
    await page.reload()  # answered, it shows no buttons after a reload either
    await open_widget(page)
    await expect(bot_messages(page).last).to_have_text("Your ticket is open.", timeout=10_000)
    await expect(page.locator("#supportbot-widget .sb-quick")).to_have_count(0)


async def test_narrow_screens_get_a_full_screen_panel(
    browser: Browser, server: WebServer, host: dict[str, Any]
) -> None:
    context = await browser.new_context(viewport={"width": 375, "height": 700})
    page = await context.new_page()
    try:
        await page.goto(host["url"])
        await open_widget(page)
        box = await page.locator("#supportbot-widget .sb-panel").bounding_box()
        assert box is not None
        assert box["width"] >= 370 and box["height"] >= 690
    finally:
        await context.close()


async def test_the_demo_page_with_a_finished_conversation(page: Page, server: WebServer) -> None:
    server.fake.token_delay = 0.01
    server.fake.script(
        Reply(text="Happy to help! Our **Trailhead 2-person tent** weighs 2.1 kg and packs to 45 cm. "
                   "See the [size guide](https://acme.example/tents) for details.")
    )  # fmt: skip
    await page.goto(server.url + "/")
    await open_widget(page)
    await send(page, "How heavy is the 2-person tent?")
    await expect(bot_messages(page).last).to_contain_text("2.1 kg", timeout=10_000)
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "widget-demo.png"))
    assert (ARTIFACTS / "widget-demo.png").stat().st_size > 10_000
    assert page.dialogs == []  # type: ignore[attr-defined]


async def test_the_command_api_events_theme_and_shutdown(page: Page, server: WebServer, host: dict[str, Any]) -> None:
    server.fake.script(Reply(text="Event seen."))
    await page.goto(host["url"])
    # Registered like a host page would, through the queue-or-run global.
    await page.evaluate("() => { window.seen = []; Supportbot('on', 'message', m => window.seen.push(m.text)); }")
    await page.evaluate("() => Supportbot('open')")
    await expect(page.locator("#supportbot-widget")).to_have_attribute("data-state", "ready", timeout=10_000)
    await expect(page.locator("#supportbot-widget .sb-title")).to_have_text("Shop help")  # data-title beats config
    await send(page, "hello")
    await expect(bot_messages(page).last).to_have_text("Event seen.", timeout=10_000)
    assert "Event seen." in await page.evaluate("() => window.seen")
    key = f"supportbot:{server.url}"
    assert await page.evaluate("k => localStorage.getItem(k)", key) is not None
    await page.evaluate("() => Supportbot('shutdown')")  # e.g. on logout
    await expect(page.locator("#supportbot-widget .sb-launcher")).to_have_count(0)
    assert await page.evaluate("k => localStorage.getItem(k)", key) is None


async def test_identify_starts_a_verified_conversation_for_the_signed_in_user(
    page: Page, server: WebServer, host: dict[str, Any]
) -> None:
    server.fake.script(Reply(text="Hello, visitor."), Reply(text="Hello, Ana."))
    await page.goto(host["url"])
    await open_widget(page)
    await send(page, "hi")
    await expect(bot_messages(page).last).to_have_text("Hello, visitor.", timeout=10_000)
    key = f"supportbot:{server.url}"
    anonymous = json.loads(await page.evaluate("k => localStorage.getItem(k)", key))
    await page.evaluate("u => Supportbot('identify', u)", signed("42", "ana@example.com"))  # she signed in
    await send(page, "hi again")
    await expect(bot_messages(page).last).to_have_text("Hello, Ana.", timeout=10_000)
    signed_in = json.loads(await page.evaluate("k => localStorage.getItem(k)", key))
    assert signed_in["id"] != anonymous["id"]
    conversation = await server.runtime.store.get_conversation(signed_in["id"])
    assert conversation is not None
    customer = await server.runtime.store.get_customer(conversation.customer_id)
    assert customer is not None and customer.verified and customer.email == "ana@example.com"


async def test_a_token_identity_keeps_its_conversation_across_fresh_tokens_and_a_bad_one_is_explained(
    page: Page, server: WebServer, host: dict[str, Any]
) -> None:
    server.fake.script(Reply(text="Hello, Ana."), Reply(text="Hello, Ben."))
    host["boot"] = {"user": signed("42", "ana@example.com")}
    await page.goto(host["url"])
    await open_widget(page)
    await send(page, "hi")
    await expect(bot_messages(page).last).to_have_text("Hello, Ana.", timeout=10_000)
    key = f"supportbot:{server.url}"
    first = json.loads(await page.evaluate("k => localStorage.getItem(k)", key))
    assert first["userKey"] == "42"  # the token's sub, read in the page
    # The page renders a fresh token for the same user (a new exp): the same conversation goes on.
    fresh = identity_token(SECRET, "42", email="ana@example.com", lifetime_s=7200)
    assert {"token": fresh} != host["boot"]["user"]
    await page.evaluate("u => Supportbot('identify', u)", {"token": fresh})
    assert json.loads(await page.evaluate("k => localStorage.getItem(k)", key))["id"] == first["id"]
    # Another user signs in: a conversation of their own, verified for their email.
    await page.evaluate("u => Supportbot('identify', u)", signed("43", "ben@example.com", "Ben"))
    await send(page, "hi")
    await expect(bot_messages(page).last).to_have_text("Hello, Ben.", timeout=10_000)
    second = json.loads(await page.evaluate("k => localStorage.getItem(k)", key))
    assert second["id"] != first["id"] and second["userKey"] == "43"
    conversation = await server.runtime.store.get_conversation(second["id"])
    assert conversation is not None
    customer = await server.runtime.store.get_customer(conversation.customer_id)
    assert customer is not None and (customer.external_id, customer.email) == ("web:43", "ben@example.com")
    # A token the server refuses (signed with another secret): the customer is told, the console says why.
    warnings: list[str] = []
    page.on("console", lambda message: warnings.append(message.text) if message.type == "warning" else None)
    forged = jwt.encode({"sub": "44", "exp": int(time.time()) + 600}, "another-secret-of-at-least-32-bytes!")
    await page.evaluate("u => Supportbot('identify', u)", {"token": forged})
    await send(page, "hello?")
    await expect(page.locator("#supportbot-widget")).to_contain_text("could not confirm your sign-in", timeout=10_000)
    assert any("signature does not verify" in text for text in warnings)


async def test_a_message_the_database_could_not_store_is_sent_again_after_reconnecting(
    page: Page, server: WebServer, host: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    intake = server.app[INTAKE]
    submit = intake.submit
    refused: list[str] = []

    async def down_once(message: Any) -> Any:
        if not refused:
            refused.append(message.text)
            raise StorageError("database at sqlite: storing a message failed: disk I/O error; check the disk")
        return await submit(message)

    monkeypatch.setattr(intake, "submit", down_once)
    server.fake.script(Reply(text="Stored and answered."))
    await page.goto(host["url"])
    await open_widget(page)
    await send(page, "Is anyone there?")
    await expect(page.locator("#supportbot-widget .sb-error")).to_contain_text("Trying again", timeout=10_000)
    # Kept (not handed back into the input), sent again on the new socket, answered once.
    assert await page.locator("#supportbot-widget textarea.sb-input").input_value() == ""
    await expect(bot_messages(page).last).to_contain_text("Stored and answered.", timeout=15_000)
    await expect(page.locator('#supportbot-widget .sb-msg[data-role="customer"]')).to_have_count(1)
    assert refused == ["Is anyone there?"]
    assert server.fake.request_count == 1
    assert "database at" not in (await page.locator("#supportbot-widget").inner_text())
