"""A reply shown while it is written: Slack's native stream or one edited message; the end is always the whole reply."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from connectors.slack.api import Budget
from connectors.slack.channel import METADATA_TYPE, SlackChannel
from connectors.slack.mrkdwn import to_markdown, to_mrkdwn
from connectors.slack.testing import DEFAULT_TEAM_ID as TEAM
from connectors.slack.testing import FakeSlack
from supportbot.channels import Identity, InboundMessage, Reply, TurnInfo
from supportbot.events import TextDelta, ToolCallStarted, TurnFinished, TurnStarted
from tests.connectors.slack.conftest import CUSTOMER, DM, SHOP, ChannelFactory

FINAL = "Your order **A1001** has shipped with DHL. <!here> it should arrive on *Tuesday*."


def thread_address(slack: FakeSlack) -> dict[str, Any]:
    root = slack.add_message(SHOP, "where is my order?", user=CUSTOMER)
    return {"channel": SHOP, "team": TEAM, "user": CUSTOMER, "thread_ts": root["ts"], "kind": "channel"}


DM_ADDRESS = {"channel": DM, "team": TEAM, "user": CUSTOMER, "thread_ts": None, "kind": "im"}


class Turn:
    """Feeds a channel one turn's events, as the core's dispatcher does."""

    def __init__(self, channel: SlackChannel, address: dict[str, Any], turn: int = 1) -> None:
        self.channel, self.address, self.turn = channel, address, turn
        message = InboundMessage(channel="slack", external_id=f"x:{turn}", key="k", text="q", address=address,
                                 identity=Identity(external_id=f"{TEAM}/{CUSTOMER}", verified=True))  # fmt: skip
        self.info = TurnInfo(turn=turn, conversation_id="c1", message=message)
        self.seq = 0
        channel.render(self.info, TurnStarted(conversation_id="c1", flow="general"))

    def say(self, text: str) -> None:
        self.channel.render(self.info, TextDelta(text=text, seq=self.seq))
        self.seq += 1

    async def finish(self, final: str = FINAL, *, outbox_id: int = 1, kind: str = "answer") -> str:
        self.channel.render(self.info, TurnFinished(text=final, message_id=1))
        return await self.channel.deliver(reply_of_turn(self.turn, self.address, final, outbox_id=outbox_id, kind=kind))


def reply_of_turn(turn: int, address: dict[str, Any], final: str = FINAL, *, outbox_id: int = 1,
                  kind: str = "answer") -> Reply:  # fmt: skip
    return Reply(outbox_id=outbox_id, channel="slack", kind=kind, text=final, turn=turn,  # type: ignore[arg-type]
                 address=address, key="k", conversation_id="c1")  # fmt: skip


def bot_messages(slack: FakeSlack, channel: str) -> list[dict[str, Any]]:
    return [m for m in slack.messages(channel) if m.get("bot_id")]


async def test_a_native_stream_in_a_thread_ends_with_the_whole_reply(
    slack: FakeSlack, make_channel: ChannelFactory
) -> None:
    channel = await make_channel(update_interval_s=0.02)
    address = thread_address(slack)
    turn = Turn(channel, address)
    turn.say("Your order ")
    [start] = await slack.wait_calls("chat.startStream")
    assert start.params["recipient_user_id"] == CUSTOMER and start.params["recipient_team_id"] == TEAM
    assert start.params["thread_ts"] == address["thread_ts"] and start.params["markdown_text"] == "Your order "
    turn.say("**A1001** has shipped with DHL. <")  # the '<' waits: it may open a token
    await slack.wait_calls("chat.appendStream")
    assert slack.calls_to("chat.appendStream")[0].params["markdown_text"] == "**A1001** has shipped with DHL. "
    sent = await turn.finish()  # the model's last words never came as deltas: the end is the stored reply
    [message] = bot_messages(slack, SHOP)
    assert sent == f"{SHOP}:{message['ts']}" and message["thread_ts"] == address["thread_ts"]
    assert message["text"] == to_markdown(FINAL) and "streaming" not in message
    assert message["metadata"] == {"event_type": METADATA_TYPE, "event_payload": {"outbox_id": 1}}
    assert not slack.calls_to("chat.postMessage") and not slack.calls_to("chat.update")


async def test_without_a_thread_one_message_is_edited(slack: FakeSlack, make_channel: ChannelFactory) -> None:
    channel = await make_channel(update_interval_s=0.02)
    turn = Turn(channel, DM_ADDRESS)
    turn.say("Your order **A1001**")
    [post] = await slack.wait_calls("chat.postMessage")
    assert post.params["text"] == "Your order *A1001*"
    turn.say(" has shipped")
    await slack.wait_calls("chat.update")
    sent = await turn.finish()
    [message] = bot_messages(slack, DM)
    assert sent == f"{DM}:{message['ts']}"
    assert message["text"] == to_mrkdwn(FINAL) and "&lt;!here&gt;" in message["text"]
    assert message["metadata"]["event_payload"] == {"outbox_id": 1}
    assert not slack.calls_to("chat.startStream")


async def test_a_reply_that_does_not_continue_the_stream_replaces_it(
    slack: FakeSlack, make_channel: ChannelFactory
) -> None:
    channel = await make_channel(update_interval_s=0.02)
    turn = Turn(channel, thread_address(slack))
    turn.say("Let me check that for you…")
    await slack.wait_calls("chat.startStream")
    await turn.finish("Your order has shipped.")
    [message] = bot_messages(slack, SHOP)
    assert message["text"] == "Your order has shipped." and message["metadata"]["event_payload"] == {"outbox_id": 1}
    assert [c.method for c in slack.calls if c.method.startswith("chat.")][-2:] == ["chat.stopStream", "chat.update"]


async def test_a_stream_slack_ended_is_replaced(slack: FakeSlack, make_channel: ChannelFactory) -> None:
    channel = await make_channel(update_interval_s=0.02)
    turn = Turn(channel, thread_address(slack))
    turn.say("Your order ")
    await slack.wait_calls("chat.startStream")
    slack.stream_ttl = 0.0  # Slack ends streams that stay open too long
    await turn.finish()
    [message] = bot_messages(slack, SHOP)
    assert message["text"] == to_mrkdwn(FINAL)
    assert slack.calls_to("chat.stopStream")[-1].error == "message_not_in_streaming_state"


async def test_a_stream_the_customer_stopped_stays_stopped(slack: FakeSlack, make_channel: ChannelFactory) -> None:
    channel = await make_channel(update_interval_s=0.02)
    turn = Turn(channel, thread_address(slack))
    turn.say("Your order ")
    await slack.wait_calls("chat.startStream")
    ts = bot_messages(slack, SHOP)[0]["ts"]
    slack.stop_stream_by_user(SHOP, ts)
    assert await turn.finish() == f"{SHOP}:{ts}"  # delivered: they asked for no more
    assert bot_messages(slack, SHOP)[0]["text"] == "Your order " and not slack.calls_to("chat.update")


async def test_where_slack_cannot_stream_the_message_is_edited(slack: FakeSlack, make_channel: ChannelFactory) -> None:
    channel = await make_channel(update_interval_s=0.02)
    slack.fail("chat.startStream", error="unknown_method")
    turn = Turn(channel, thread_address(slack))
    turn.say("Your order ")
    await slack.wait_calls("chat.postMessage")
    await turn.finish()
    [message] = bot_messages(slack, SHOP)
    assert message["text"] == to_mrkdwn(FINAL) and not channel.native_streaming


async def test_a_live_message_that_never_started_leaves_the_reply_to_a_post(
    slack: FakeSlack, make_channel: ChannelFactory
) -> None:
    channel = await make_channel(update_interval_s=0.02)
    slack.fail("chat.startStream", error="channel_not_found")
    turn = Turn(channel, thread_address(slack))
    turn.say("Your order ")
    await slack.wait_calls("chat.startStream")
    await turn.finish()
    [message] = bot_messages(slack, SHOP)
    assert message["text"] == to_mrkdwn(FINAL) and len(slack.calls_to("chat.postMessage")) == 1


async def test_streaming_off_posts_the_reply_once(slack: FakeSlack, make_channel: ChannelFactory) -> None:
    channel = await make_channel(streaming="off")
    turn = Turn(channel, thread_address(slack))
    turn.say("Your order ")
    await turn.finish()
    assert [c.method for c in slack.calls if c.method.startswith("chat.")] == ["chat.postMessage"]


async def test_native_only_leaves_top_level_replies_unstreamed(slack: FakeSlack, make_channel: ChannelFactory) -> None:
    channel = await make_channel(streaming="native", update_interval_s=0.02)
    turn = Turn(channel, DM_ADDRESS)
    turn.say("Your order ")
    await turn.finish()
    assert [c.method for c in slack.calls if c.method.startswith("chat.")] == ["chat.postMessage"]


async def test_a_ticket_of_the_turn_does_not_take_over_its_live_message(
    slack: FakeSlack, make_channel: ChannelFactory
) -> None:
    channel = await make_channel(update_interval_s=0.02)
    turn = Turn(channel, thread_address(slack))
    turn.say("Your order ")
    await slack.wait_calls("chat.startStream")
    ticket = Reply(outbox_id=2, channel="slack", kind="ticket", text="", turn=1, data={"ticket_id": 3})
    await channel.deliver(ticket)
    await turn.finish()
    assert bot_messages(slack, SHOP)[0]["text"] == to_markdown(FINAL)


async def test_live_calls_keep_to_one_per_interval(slack: FakeSlack, make_channel: ChannelFactory) -> None:
    interval = 0.1
    channel = await make_channel(update_interval_s=interval)
    for turn_no, address in ((1, DM_ADDRESS), (2, thread_address(slack))):
        turn = Turn(channel, address, turn=turn_no)
        started = time.monotonic()
        for n in range(60):
            turn.say(f"word{n} ")
            await asyncio.sleep(0.01)  # the model's pace, not a wait for a result
        elapsed = time.monotonic() - started
        await turn.finish(" ".join(f"word{n}" for n in range(60)) + " ", outbox_id=turn_no)
    live = [c for c in slack.calls if c.method in ("chat.postMessage", "chat.update", "chat.startStream",
                                                   "chat.appendStream")]  # fmt: skip
    # Per turn: at most one call per interval while it ran, plus the final one.
    assert 2 <= len(live) <= 2 * (elapsed / interval + 2), [c.method for c in live]
    assert len(bot_messages(slack, DM)) == 1 and len(bot_messages(slack, SHOP)) == 1


async def test_a_rate_limited_stream_waits_and_the_end_is_still_whole(
    slack: FakeSlack, make_channel: ChannelFactory
) -> None:
    channel = await make_channel(update_interval_s=0.02)
    turn = Turn(channel, thread_address(slack))
    turn.say("Your order ")
    await slack.wait_calls("chat.startStream")
    slack.fail("chat.appendStream", status=429, retry_after=30)
    turn.say("**A1001** has ")
    await slack.wait_calls("chat.appendStream")
    turn.say("shipped ")
    assert channel.budgets["chat.appendStream"].wait() > 25  # Retry-After holds every live append of the workspace
    await turn.finish()
    assert len(slack.calls_to("chat.appendStream")) == 1
    assert bot_messages(slack, SHOP)[0]["text"] == to_markdown(FINAL)


async def test_assistant_threads_show_a_status_while_the_bot_works(
    slack: FakeSlack, make_channel: ChannelFactory
) -> None:
    channel = await make_channel(update_interval_s=0.02)
    root = slack.add_message(DM, "hi", user=CUSTOMER)
    address = {**DM_ADDRESS, "thread_ts": root["ts"], "kind": "assistant"}
    turn = Turn(channel, address)
    await slack.wait_until(lambda: slack.assistant_status.get((DM, root["ts"])) == "is thinking…")
    channel.render(turn.info, ToolCallStarted(call_id="c", name="lookup_order", arguments="{}"))
    await slack.wait_until(lambda: slack.assistant_status.get((DM, root["ts"])) == "is looking that up…")
    turn.say("Shipped.")
    await turn.finish("Shipped.")
    assert bot_messages(slack, DM)[-1]["text"] == "Shipped."


async def test_a_live_message_whose_reply_never_came_is_ended(slack: FakeSlack, make_channel: ChannelFactory) -> None:
    channel = await make_channel(update_interval_s=0.02)
    turn = Turn(channel, thread_address(slack))
    turn.say("Your order ")
    await slack.wait_calls("chat.startStream")
    channel.render(turn.info, TurnFinished(text=FINAL, message_id=1))
    channel._expire(turn.turn)
    await slack.wait_calls("chat.stopStream")
    turn.say("late delta")  # ignored: the turn is over
    assert "streaming" not in bot_messages(slack, SHOP)[0]


async def test_a_restarted_server_finishes_the_live_message_it_left(
    slack: FakeSlack, make_channel: ChannelFactory
) -> None:
    """kill -9 after the reply was stored but before it was delivered: the new process finishes the half-written
    live message instead of posting the reply beside it."""
    address = thread_address(slack)
    before = await make_channel(update_interval_s=0.02)
    turn = Turn(before, address)
    turn.say("Your order ")
    await slack.wait_calls("chat.startStream")
    await slack.wait_until(lambda: bool(before._live[1].ts))
    after = await make_channel(update_interval_s=0.02)  # the restarted process: nothing in memory
    sent = await after.deliver(reply_of_turn(1, address))
    [message] = bot_messages(slack, SHOP)
    assert sent == f"{SHOP}:{message['ts']}" and message["text"] == to_mrkdwn(FINAL)
    assert message["metadata"]["event_payload"] == {"outbox_id": 1} and "streaming" not in message


async def test_a_resumed_turn_continues_in_the_live_message_it_left(
    slack: FakeSlack, make_channel: ChannelFactory
) -> None:
    """kill -9 while the reply was being written: the resumed turn edits the same message, then finishes it."""
    before = await make_channel(update_interval_s=0.02)
    first = Turn(before, DM_ADDRESS)
    first.say("Your order")
    await slack.wait_calls("chat.postMessage")
    after = await make_channel(update_interval_s=0.02)
    again = Turn(after, DM_ADDRESS)  # the same turn (its inbox id), run again from the start
    again.say("Your order **A1001**")
    await slack.wait_calls("chat.update")
    await again.finish()
    [message] = bot_messages(slack, DM)
    assert message["text"] == to_mrkdwn(FINAL) and len(slack.calls_to("chat.postMessage")) == 1


async def test_a_live_message_someone_deleted_leaves_the_reply_to_a_post(
    slack: FakeSlack, make_channel: ChannelFactory
) -> None:
    channel = await make_channel(update_interval_s=0.02)
    turn = Turn(channel, DM_ADDRESS)
    turn.say("Your order")
    await slack.wait_calls("chat.postMessage")
    await slack.wait_until(lambda: bool(bot_messages(slack, DM)))
    await channel.api.chat_delete(channel=DM, ts=bot_messages(slack, DM)[0]["ts"])
    sent = await turn.finish()
    [message] = bot_messages(slack, DM)
    assert sent == f"{DM}:{message['ts']}" and message["text"] == to_mrkdwn(FINAL)


def test_a_budget_spends_its_burst_then_keeps_the_rate() -> None:
    now = [0.0]
    budget = Budget(60, burst=3, clock=lambda: now[0])
    assert [budget.take() for _ in range(4)] == [True, True, True, False]
    assert budget.wait() == 1.0
    now[0] += 1.0
    assert budget.take() and not budget.take()
    budget.pause(30)
    now[0] += 10
    assert budget.wait() == 20.0 and not budget.take()


async def test_a_later_turn_shows_after_the_reply_still_being_delivered(
    slack: FakeSlack, make_channel: ChannelFactory
) -> None:
    channel = await make_channel(update_interval_s=1.0)
    first = Turn(channel, DM_ADDRESS, turn=1)
    channel.render(first.info, TurnFinished(text="First answer.", message_id=1))  # queued, not delivered yet
    second = Turn(channel, DM_ADDRESS, turn=2)
    second.say("Second answer.")
    await asyncio.sleep(0.2)  # the second turn's live message would be posted by now
    assert not slack.calls_to("chat.postMessage")  # it waits for the first reply
    await channel.deliver(reply_of_turn(1, DM_ADDRESS, "First answer.", outbox_id=1))
    await slack.wait_until(lambda: len(bot_messages(slack, DM)) == 2, timeout=5)
    channel.render(second.info, TurnFinished(text="Second answer.", message_id=2))
    await channel.deliver(reply_of_turn(2, DM_ADDRESS, "Second answer.", outbox_id=2))
    assert [m["text"] for m in bot_messages(slack, DM)] == ["First answer.", "Second answer."]
