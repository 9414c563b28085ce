"""The admin page in a real browser (Debian's Chromium via Playwright) next to a customer's widget.

An operator signs in, watches the ticket of a scripted conversation arrive in the list, opens its
log, and replies; the reply appears in the customer's widget in a second browser context. A
screenshot of the ticket page is saved to ``test-artifacts/admin-ticket.png`` (and of the overview to
``admin-overview.png``).
"""

from __future__ import annotations

from playwright.async_api import Browser, BrowserContext, Dialog, Page, expect

from supportbot.store.base import NewMessage
from supportbot.testing.fake_llm import Reply
from tests.admin.conftest import PASSWORD
from tests.conftest import ARTIFACTS, require_chromium
from tests.connectors.web.conftest import WebServer

XSS = '<img src="/x-xss-probe" onerror="alert(1)"><script>alert(2)</script>'

require_chromium()


async def _context(browser: Browser) -> BrowserContext:
    context = await browser.new_context(viewport={"width": 1360, "height": 900})
    return context


def _watch(page: Page) -> dict[str, list[str]]:
    """Collect dialogs (script that ran), console errors (e.g. CSP violations) and odd requests."""
    seen: dict[str, list[str]] = {"dialogs": [], "requests": [], "console": []}

    async def dialog(dialog: Dialog) -> None:
        if dialog.type == "confirm" and dialog.message.startswith("Let the bot answer"):
            await dialog.accept()  # the operator says yes to handing back
        else:
            seen["dialogs"].append(dialog.message)
            await dialog.dismiss()

    page.on("dialog", dialog)
    page.on("request", lambda request: seen["requests"].append(request.url))
    page.on("console", lambda message: seen["console"].append(message.text) if message.type == "error" else None)
    return seen


async def _sign_in(page: Page, server: WebServer) -> None:
    await page.goto(f"{server.url}/admin")
    await expect(page).to_have_url(f"{server.url}/admin/login?next=/admin/tickets")
    await page.get_by_label("Name").fill("admin")
    await page.get_by_label("Password or admin token").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(f"{server.url}/admin/tickets")


async def test_an_operator_finds_the_ticket_reads_the_log_and_replies_into_the_widget(
    browser: Browser, server: WebServer
) -> None:
    server.fake.script(
        Reply(tool_calls=[("handoff_to_human", {"reason": "the customer asked for a person"})]),
        Reply(text="I've asked a colleague to join."),
    )
    operator_context, customer_context = await _context(browser), await _context(browser)
    try:
        admin = await operator_context.new_page()
        admin_seen = _watch(admin)
        await _sign_in(admin, server)
        await expect(admin.locator("#tickets tr.empty")).to_have_count(1)

        customer = await customer_context.new_page()
        await customer.goto(f"{server.url}/")
        await customer.locator("#supportbot-widget .sb-launcher").click()
        await expect(customer.locator("#supportbot-widget")).to_have_attribute("data-state", "ready", timeout=10_000)
        box = customer.locator("#supportbot-widget textarea.sb-input")
        await box.fill("My tent pole snapped, can a person help me?")
        await box.press("Enter")
        await expect(customer.locator('#supportbot-widget .sb-msg[data-role="bot"]').last).to_contain_text(
            "asked a colleague to join", timeout=10_000
        )

        # The new ticket shows up in the open list without a reload, pushed over the list's event stream.
        row = admin.locator("#tickets tbody tr.new")
        await expect(row).to_have_count(1, timeout=10_000)
        await expect(row).to_contain_text("the customer asked for a person")
        asked = [url for url in admin_seen["requests"] if "/admin/tickets/" in url]
        assert any("/admin/tickets/stream?" in url for url in asked) and not any("/live?" in url for url in asked)
        await row.get_by_role("link").first.click()
        await expect(admin.locator("h1")).to_contain_text("#1")

        log = admin.locator("section.log")
        await expect(log.locator(".msg.who-customer")).to_contain_text("My tent pole snapped")
        tool = log.locator("details.tool").filter(has_text="handoff_to_human")
        await tool.locator("summary").click()
        await expect(tool.locator("pre").first).to_contain_text('"reason": "the customer asked for a person"')
        await expect(admin.locator("dl.totals")).to_contain_text("Model calls")

        await admin.get_by_label("Reply", exact=True).fill("Hi, this is Dana. A new pole is on its way.")
        await admin.get_by_role("button", name="Send reply").click()
        await expect(admin.locator(".flash")).to_have_text("Reply sent to the customer.")
        await expect(log.locator(".msg.who-human")).to_contain_text("A new pole is on its way")

        human = customer.locator('#supportbot-widget .sb-msg[data-role="human"]')
        await expect(human.last).to_contain_text("A new pole is on its way", timeout=10_000)

        ARTIFACTS.mkdir(exist_ok=True)
        await tool.evaluate("d => d.open = true")
        await admin.screenshot(path=str(ARTIFACTS / "admin-ticket.png"), full_page=True)

        # Handing back: the customer hears it, and the bot answers the next message.
        await admin.get_by_role("button", name="Hand back to the bot").click()
        await expect(admin.locator(".flash")).to_have_text("The bot answers this customer again.")
        await expect(customer.locator('#supportbot-widget .sb-msg[data-kind="notice"]').last).to_contain_text(
            "chatting with our assistant again", timeout=10_000
        )
        server.fake.script(Reply(text="The bot here again: anything else?"))
        await box.fill("Thanks!")
        await box.press("Enter")
        await expect(customer.locator('#supportbot-widget .sb-msg[data-role="bot"]').last).to_contain_text(
            "The bot here again", timeout=10_000
        )
        await admin.get_by_role("link", name="Overview").click()
        await expect(admin.locator(".charts svg")).to_have_count(4)
        await admin.screenshot(path=str(ARTIFACTS / "admin-overview.png"), full_page=True)
        assert admin_seen["dialogs"] == [] and admin_seen["console"] == []
    finally:
        await operator_context.close()
        await customer_context.close()


async def test_a_stored_payload_stays_inert_on_every_admin_page(browser: Browser, server: WebServer) -> None:
    store = server.runtime.store
    customer = await store.get_or_create_customer(email="mallory@example.com", name=XSS, verified=True)
    conversation = await store.create_conversation(customer_id=customer.id, channel="web", flow="general")
    await store.add_messages(conversation.id, [
        NewMessage(role="user", content=f"hi {XSS}"),
        NewMessage(role="assistant", content=f"echo {XSS}", model="m"),
    ])  # fmt: skip
    ticket = await store.create_ticket(subject=XSS, description=XSS, conversation_id=conversation.id,
                                       customer_id=customer.id, channel="web", flow=XSS)  # fmt: skip
    await store.update_ticket(ticket.id, actor=XSS, note=XSS, assignee=XSS)
    context = await _context(browser)
    try:
        page = await context.new_page()
        seen = _watch(page)
        await _sign_in(page, server)
        pages = ["/admin/tickets", f"/admin/tickets/{ticket.id}", "/admin/conversations",
                 f"/admin/conversations/{conversation.id}", "/admin/overview", "/admin/tickets?q=%3Cimg"]  # fmt: skip
        for path in pages:
            await page.goto(server.url + path)
            await expect(page.locator("main")).to_be_visible()
        await page.goto(f"{server.url}/admin/tickets/{ticket.id}")
        await expect(page.locator("h1")).to_contain_text('<img src="/x-xss-probe"')  # shown as text
        assert seen["dialogs"] == []
        assert not [url for url in seen["requests"] if "x-xss-probe" in url]
        # A script-made request without the CSRF token is refused, as is one after signing out.
        status = await page.evaluate(
            """() => fetch(location.pathname + '/note', {method: 'POST', body: new URLSearchParams({text: 'x'})})
                     .then(r => r.status)"""
        )
        assert status == 403
        await page.get_by_role("button", name="Sign out").click()
        await expect(page).to_have_url(f"{server.url}/admin/login")
        status = await page.evaluate(
            f"""() => fetch('/admin/tickets/{ticket.id}/note', {{method: 'POST', body: new URLSearchParams(
                     {{text: 'x', csrf: document.body.dataset.csrf}})}}).then(r => r.status)"""
        )
        assert status == 401
    finally:
        await context.close()


async def test_the_ticket_list_fits_a_390_pixel_phone(browser: Browser, server: WebServer) -> None:
    store = server.runtime.store
    customer = await store.get_or_create_customer(email="ana@example.com", verified=True)
    conversation = await store.create_conversation(customer_id=customer.id, channel="web", flow="general")
    for n in range(3):
        await store.create_ticket(subject=f"Tent pole {n} snapped on the first night of a long hiking trip",
                                  description="d", conversation_id=conversation.id, customer_id=customer.id,
                                  channel="web", flow="general", priority="urgent")  # fmt: skip
    context = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        page = await context.new_page()
        await _sign_in(page, server)
        await expect(page.locator("#tickets tbody tr")).to_have_count(3)
        width = await page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390, f"the page is {width} px wide on a 390 px screen"
        # The table keeps every column: it scrolls inside its own box.
        box = page.locator(".scroll-x").first
        assert await box.evaluate("el => el.scrollWidth > el.clientWidth")
        await page.goto(f"{server.url}/admin/conversations")
        await expect(page.locator("main table.list")).to_be_visible()
        assert await page.evaluate("() => document.documentElement.scrollWidth") <= 390
        await page.goto(f"{server.url}/admin/overview")
        await expect(page.locator(".charts svg").first).to_be_visible()
        assert await page.evaluate("() => document.documentElement.scrollWidth") <= 390
        ARTIFACTS.mkdir(exist_ok=True)
        await page.goto(f"{server.url}/admin/tickets")
        await page.screenshot(path=str(ARTIFACTS / "admin-tickets-phone.png"), full_page=True)
    finally:
        await context.close()
