"""The widget's WebSocket against a real server: history, streaming, reconnects, refusals."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from connectors.web.ws import CLOSE_UNAUTHORIZED
from supportbot.operators import Operators
from supportbot.server import INTAKE
from supportbot.store.sql import SQLStore
from supportbot.testing.fake_llm import Hang, Reply
from tests.connectors.web.conftest import OTHER_ORIGIN, WebServer
from tests.connectors.web.test_api import stored_rows


def protocols(token: str) -> tuple[str, str]:
    return ("supportbot.v1", f"token.{token}")


async def receive_until(ws: aiohttp.ClientWebSocketResponse, kind: str) -> list[dict[str, Any]]:
    """Frames up to and including the first of type ``kind`` (within 10 seconds)."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while True:
            frame = await ws.receive_json()
            frames.append(frame)
            if frame["type"] == kind:
                return frames


async def test_a_socket_gets_the_history_then_streams_a_reply(server: WebServer) -> None:
    server.fake.token_delay = 0.005
    server.fake.script(Reply(text="Happy to help with that."))
    opened = await server.open()
    async with server.http.ws_connect(server.ws_url, protocols=protocols(opened["token"])) as ws:
        assert ws.protocol == "supportbot.v1"
        history = await ws.receive_json()
        assert history["type"] == "history"
        assert [m["kind"] for m in history["messages"]] == ["greeting"]
        await ws.send_json({"type": "message", "text": "hello", "client_message_id": "c1"})
        frames = await receive_until(ws, "turn_finished")
    kinds = [f["type"] for f in frames]
    echo = next(f for f in frames if f["type"] == "message")  # the customer's message, to every open tab
    assert echo["client_message_id"] == "c1" and echo["message"]["text"] == "hello"
    assert "ack" in kinds and "turn_started" in kinds
    text = "".join(f["text"] for f in frames if f["type"] == "delta")
    assert text == frames[-1]["message"]["text"] == "Happy to help with that."


async def test_a_tool_call_shows_as_a_label_without_its_arguments_or_result(server: WebServer) -> None:
    server.fake.script(Reply(tool_calls=[("lookup_order", {"order_id": "A1001"})]), Reply(text="Please sign in."))
    opened = await server.open(flow="order_status")
    async with server.http.ws_connect(server.ws_url, protocols=protocols(opened["token"])) as ws:
        await ws.receive_json()
        await ws.send_json({"type": "message", "text": "where is A1001?", "client_message_id": "c1"})
        frames = await receive_until(ws, "turn_finished")
    started = next(f for f in frames if f["type"] == "tool_started")
    assert started == {"type": "tool_started", "turn": started["turn"], "name": "lookup_order",
                       "label": "Looking up your order…"}  # fmt: skip
    assert "A1001" not in str(frames[2:])  # neither the arguments nor the result
    assert "verified" not in str(frames)


async def test_a_reconnect_mid_reply_shows_the_reply_so_far_then_the_rest(server: WebServer) -> None:
    server.fake.token_delay = 0.05
    words = " ".join(f"w{i}" for i in range(30))
    server.fake.script(Reply(text=words))
    opened = await server.open()
    async with server.http.ws_connect(server.ws_url, protocols=protocols(opened["token"])) as ws:
        await ws.receive_json()
        await ws.send_json({"type": "message", "text": "tell me", "client_message_id": "c1"})
        seen = [f for f in await receive_until(ws, "delta") if f["type"] == "delta"]
        while len(seen) < 3:
            frame = await ws.receive_json()
            if frame["type"] == "delta":
                seen.append(frame)
    # Gone mid-reply; a new socket (a reload) gets the reply so far, then the rest without repeats.
    async with server.http.ws_connect(server.ws_url, protocols=protocols(opened["token"])) as ws:
        history = await ws.receive_json()
        live = history["live"]
        assert live is not None and live["seq"] >= 2
        assert words.startswith(live["text"])
        assert [m["role"] for m in history["messages"]] == ["bot", "customer"]  # nothing of the reply twice
        frames = await receive_until(ws, "turn_finished")
    rest = [f for f in frames if f["type"] == "delta" and f["seq"] > live["seq"]]
    assert live["text"] + "".join(f["text"] for f in rest) == words
    assert frames[-1]["message"]["text"] == words


async def test_two_tabs_of_one_conversation_both_see_the_reply(server: WebServer) -> None:
    server.fake.script(Reply(text="Both of you see this."))
    opened = await server.open()
    async with (
        server.http.ws_connect(server.ws_url, protocols=protocols(opened["token"])) as tab1,
        server.http.ws_connect(server.ws_url, protocols=protocols(opened["token"])) as tab2,
    ):
        await tab1.receive_json()
        await tab2.receive_json()
        await tab1.send_json({"type": "message", "text": "hello", "client_message_id": "c1"})
        other = await receive_until(tab2, "turn_finished")
        assert other[0]["type"] == "message" and other[0]["message"]["text"] == "hello"
        assert other[-1]["message"]["text"] == "Both of you see this."


@pytest.mark.parametrize("token", ["wrong", ""])
async def test_a_wrong_token_is_closed_with_4401(server: WebServer, token: str) -> None:
    async with server.http.ws_connect(server.ws_url, protocols=protocols(token)) as ws:
        message = await ws.receive()
    assert message.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == CLOSE_UNAUTHORIZED


async def test_a_socket_from_another_origin_is_refused_before_the_upgrade(server: WebServer) -> None:
    opened = await server.open()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await server.http.ws_connect(
            server.ws_url, protocols=protocols(opened["token"]), headers={"Origin": "https://evil.example"}
        )
    assert refused.value.status == 403
    async with server.http.ws_connect(
        server.ws_url, protocols=protocols(opened["token"]), headers={"Origin": OTHER_ORIGIN}
    ) as ws:
        assert (await ws.receive_json())["type"] == "history"


async def test_bad_frames_get_an_error_frame_and_the_socket_stays_open(server: WebServer) -> None:
    server.fake.script(Reply(text="still here"))
    opened = await server.open()
    async with server.http.ws_connect(server.ws_url, protocols=protocols(opened["token"])) as ws:
        await ws.receive_json()
        await ws.send_str("not json")
        assert (await ws.receive_json())["code"] == "bad_request"
        await ws.send_bytes(b"\x00\x01binary")
        assert "JSON text frames" in (await ws.receive_json())["message"]
        await ws.send_json({"type": "message", "text": "", "client_message_id": "c0"})
        error = await ws.receive_json()
        assert error["type"] == "error" and error["client_message_id"] == "c0"
        await ws.send_json({"type": "message", "text": "hi", "client_message_id": "c1"})
        frames = await receive_until(ws, "turn_finished")
    assert frames[-1]["message"]["text"] == "still here"


async def test_a_text_over_the_limit_gets_an_error_frame_nothing_is_stored_and_the_socket_stays_usable(
    server: WebServer,
) -> None:
    server.fake.script(Reply(text="short is fine"))
    opened = await server.open()
    before = await stored_rows(server)
    async with server.http.ws_connect(server.ws_url, protocols=protocols(opened["token"])) as ws:
        await ws.receive_json()
        await ws.send_json({"type": "message", "text": "x" * 8001, "client_message_id": "c1"})
        error = await ws.receive_json()
        assert error["type"] == "error" and error["code"] == "too_large" and error["client_message_id"] == "c1"
        assert "limits.max_message_chars" in error["message"] and "8,000" in error["message"]
        assert error["retryable"] is False
        assert await stored_rows(server) == before
        await ws.send_json({"type": "message", "text": "x" * 8000, "client_message_id": "c2"})
        frames = await receive_until(ws, "turn_finished")
    assert {f.get("client_message_id") for f in frames} == {"c2", None}  # nothing more of c1
    assert frames[-1]["message"]["text"] == "short is fine"


@pytest.mark.parametrize("settings", [{"limits": {"max_image_bytes": 1000, "max_message_chars": 100}}], indirect=True)
async def test_a_frame_over_the_size_limit_closes_with_1009(server: WebServer) -> None:
    opened = await server.open()
    async with server.http.ws_connect(server.ws_url, protocols=protocols(opened["token"]), max_msg_size=0) as ws:
        await ws.receive_json()
        await ws.send_str('{"type": "message", "text": "' + "x" * (server.app._client_max_size + 10) + '"}')
        message = await ws.receive()
    assert message.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG


@pytest.mark.parametrize("settings", [{"web": {"rate_limits": {"connections_per_conversation": 1}}}], indirect=True)
async def test_connections_per_conversation_are_capped(server: WebServer) -> None:
    opened = await server.open()
    async with server.http.ws_connect(server.ws_url, protocols=protocols(opened["token"])) as first:
        await first.receive_json()
        async with server.http.ws_connect(server.ws_url, protocols=protocols(opened["token"])) as second:
            await second.receive()
        assert second.close_code == 4429


async def test_open_sockets_are_counted_in_metrics(server: WebServer) -> None:
    opened = await server.open()
    async with server.http.ws_connect(server.ws_url, protocols=protocols(opened["token"])) as ws:
        await ws.receive_json()
        async with server.http.get(f"{server.url}/metrics") as response:
            text = await response.text()
        assert "supportbot_websocket_connections 1.0" in text


async def test_a_turn_running_at_shutdown_is_handed_back(server: WebServer) -> None:
    server.fake.script(Hang(30))
    opened = await server.open()
    async with server.http.ws_connect(server.ws_url, protocols=protocols(opened["token"])) as ws:
        await ws.receive_json()
        await ws.send_json({"type": "message", "text": "hello", "client_message_id": "c1"})
        await receive_until(ws, "turn_started")
        handed_back = await server.dispatcher.drain(0.1)
    assert handed_back == 1
    pending = await server.runtime.store.inbox_pending("web", statuses=("received", "stored"))  # type: ignore[attr-defined]
    assert [item.status for item in pending] == ["stored"]


@pytest.mark.parametrize(
    "settings", [{"llm": {}, "company": {"name": "Acme", "support_email": "help@acme.example"}}], indirect=True
)  # the default hosted model, no key
async def test_without_a_model_customers_read_not_available_and_the_how_to_goes_to_the_log(
    server: WebServer, caplog: pytest.LogCaptureFixture
) -> None:
    customer_text = (
        "The assistant is not available right now. Please try again later. "
        "You can also write to us at help@acme.example."
    )
    opened = await server.open()
    async with server.http.ws_connect(server.ws_url, protocols=protocols(opened["token"])) as ws:
        assert (await ws.receive_json())["type"] == "history"
        notice = await ws.receive_json()
        assert notice["code"] == "no_model" and notice["message"] == customer_text
        await ws.send_json({"type": "message", "text": "hello", "client_message_id": "c1"})
        refused = await ws.receive_json()
        assert refused["code"] == "no_model" and refused["client_message_id"] == "c1"
        assert refused["message"] == customer_text
    async with server.http.post(
        f"{server.url}/api/v1/conversations/{opened['id']}/messages", json={"text": "hi"},
        headers={"Authorization": f"Bearer {opened['token']}"},
    ) as response:  # fmt: skip
        assert response.status == 503
        error = (await response.json())["error"]
    assert error["code"] == "no_model" and error["message"] == customer_text
    logged = [r.getMessage() for r in caplog.get_records("setup") if r.name == "supportbot.web"]
    assert any("SUPPORTBOT_LLM_API_KEY" in line for line in logged)  # the how-to, for whoever runs the server


async def test_an_operator_reply_reaches_every_open_tab(server: WebServer) -> None:
    opened = await server.open()
    async with server.http.ws_connect(server.ws_url, protocols=protocols(opened["token"])) as ws:
        await ws.receive_json()
        saved = await server.app[INTAKE].operators.reply(
            actor="maria", text="Maria here.", conversation_id=opened["id"]
        )
        frame = await ws.receive_json()
    assert frame["type"] == "message" and frame["conversation_status"] == "human"
    assert frame["message"]["role"] == "human" and frame["message"]["text"] == "Maria here."
    assert frame["message"]["id"] == saved.id


@pytest.mark.parametrize("settings", [{"admin": {"enabled": False}}], indirect=True)
async def test_a_reply_stored_by_another_process_reaches_the_widget_without_the_admin_page(
    server: WebServer, tmp_path: Path
) -> None:
    # As `supportbot tickets reply` does: its own process, its own connection to the database.
    opened = await server.open()
    async with server.http.ws_connect(server.ws_url, protocols=protocols(opened["token"])) as ws:
        await ws.receive_json()
        other = await SQLStore.open(f"sqlite+aiosqlite:///{tmp_path / 'web.db'}")
        try:
            await Operators(other).reply(actor="maria", text="From the command line.", conversation_id=opened["id"])
        finally:
            await other.close()
        async with asyncio.timeout(10):
            frame = await ws.receive_json()
    assert frame["type"] == "message" and frame["message"]["text"] == "From the command line."
    assert frame["conversation_status"] == "human"
