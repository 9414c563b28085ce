"""The admin JSON API: Bearer token, filters, one ticket's whole record, actions with who did them."""

from __future__ import annotations

from typing import Any

from supportbot.testing.fake_llm import Reply
from tests.admin.conftest import TOKEN
from tests.connectors.web.conftest import WebServer

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _handed_off(server: WebServer) -> tuple[dict[str, Any], int]:
    server.fake.script(Reply(tool_calls=[("handoff_to_human", {"reason": "wants a person"})]), Reply(text="OK."))
    conversation = await server.open()
    await server.ask(conversation, "A person, please")
    [ticket] = await server.runtime.store.list_tickets(conversation_id=conversation["id"])
    return conversation, ticket.id


async def test_the_api_needs_the_admin_token(server: WebServer) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": f"Basic {TOKEN}"}):
        async with server.http.get(f"{server.url}/api/v1/admin/tickets", headers=headers) as response:
            assert response.status == 401
            assert (await response.json())["error"]["code"] == "unauthorized"


async def test_a_ticket_comes_with_its_events_conversation_and_messages(server: WebServer) -> None:
    conversation, ticket_id = await _handed_off(server)
    async with server.http.get(f"{server.url}/api/v1/admin/tickets?status=open", headers=AUTH) as response:
        listed = await response.json()
    assert listed["total"] == 1 and listed["tickets"][0]["id"] == ticket_id
    async with server.http.get(f"{server.url}/api/v1/admin/tickets/{ticket_id}", headers=AUTH) as response:
        document = await response.json()
    assert document["conversation"]["id"] == conversation["id"]
    assert document["events"][0]["action"] == "created"
    calls = [c["name"] for m in document["messages"] for c in m["tool_calls"]]
    assert calls == ["handoff_to_human"]
    assert document["totals"]["model_calls"] >= 1 and document["totals"]["cost_usd"] > 0


async def test_actions_are_recorded_under_the_operators_name(server: WebServer) -> None:
    conversation, ticket_id = await _handed_off(server)
    url = f"{server.url}/api/v1/admin/tickets/{ticket_id}"
    headers = AUTH | {"X-Operator": "dana"}
    async with server.http.post(f"{url}/reply", json={"text": "Hello from a person"}, headers=headers) as response:
        assert response.status == 201
        assert (await response.json())["message"]["kind"] == "human"
    async with server.http.post(f"{url}/notes", json={"text": "called them"}, headers=headers) as response:
        assert response.status == 201
    async with server.http.patch(url, json={"status": "solved", "assignee": "dana"}, headers=headers) as response:
        assert (await response.json())["ticket"]["status"] == "solved"
    async with server.http.post(f"{url}/handback", headers=headers) as response:
        assert (await response.json())["conversation"]["status"] == "bot"
    events = await server.runtime.store.ticket_events(ticket_id)
    assert [(e.actor, e.action) for e in events[1:]] == [
        ("api:dana", "reply"), ("api:dana", "note"), ("api:dana", "status"), ("api:dana", "assignee"),
        ("api:dana", "handback"),
    ]  # fmt: skip
    async with server.http.get(f"{server.url}/api/v1/admin/conversations/{conversation['id']}",
                               headers=AUTH) as response:  # fmt: skip
        document = await response.json()
    assert document["messages"][-1]["author"] == "api:dana"
    assert [t["id"] for t in document["tickets"]] == [ticket_id]


async def test_bad_requests_say_what_is_wrong(server: WebServer) -> None:
    _, ticket_id = await _handed_off(server)
    url = f"{server.url}/api/v1/admin/tickets"
    cases = [
        ("GET", f"{url}?status=lost", None, 400, "status: 'lost' is not one of"),
        ("GET", f"{url}/999", None, 404, "no ticket #999"),
        ("PATCH", f"{url}/{ticket_id}", {"status": "gone"}, 400, "status: use one of"),
        ("PATCH", f"{url}/{ticket_id}", {"colour": "red"}, 400, "unknown field(s) colour"),
        ("POST", f"{url}/{ticket_id}/reply", {"text": ""}, 400, "the reply is empty"),
        ("POST", f"{url}/{ticket_id}/reply", {"message": "hi"}, 400, "text: give the text as a string"),
        ("GET", f"{server.url}/api/v1/admin/overview?days=0", None, 400, "days:"),
        ("GET", f"{server.url}/api/v1/admin/conversations/nope", None, 404, "no conversation 'nope'"),
    ]
    for method, target, body, status, message in cases:
        async with server.http.request(method, target, json=body, headers=AUTH) as response:
            assert response.status == status, (method, target)
            assert message in (await response.json())["error"]["message"], (method, target)
    async with server.http.post(f"{url}/{ticket_id}/notes", data=b"not json", headers=AUTH) as response:
        assert response.status == 400 and (await response.json())["error"]["code"] == "bad_json"


async def test_the_overview_and_the_conversation_list(server: WebServer) -> None:
    await _handed_off(server)
    async with server.http.get(f"{server.url}/api/v1/admin/overview?days=7", headers=AUTH) as response:
        overview = await response.json()
    assert overview["days"] == 7 and len(overview["opened_per_day"]) == 7
    assert overview["opened_per_day"][-1][1] == 1 and overview["tickets_by_status"]["open"] == 1
    async with server.http.get(f"{server.url}/api/v1/admin/conversations?status=human", headers=AUTH) as response:
        assert (await response.json())["total"] == 1
