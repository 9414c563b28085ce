"""What each Slack event means: conversation keys, reply addresses, and what the bot never answers."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.slack.inbound import (
    CONFIRM_NO,
    CONFIRM_YES,
    HAND_BACK,
    ButtonPress,
    ConfirmValue,
    Customer,
    HandBack,
    Ignored,
    Operator,
    ThreadStarted,
    classify_action,
    classify_event,
    is_hand_back,
)
from connectors.slack.testing import (
    DEFAULT_BOT_USER_ID as BOT,
)
from connectors.slack.testing import (
    DEFAULT_TEAM_ID as TEAM,
)
from connectors.slack.testing import (
    app_mention,
    assistant_thread_context_changed,
    assistant_thread_started,
    block_actions_payload,
    event_callback,
    im_message,
    message_event,
)
from supportbot.channels import Identity

TICKETS = "C0TICKETS1"


def classify(event: dict[str, Any], **options: Any) -> Any:
    return classify_event(event_callback(event), bot_user_id=BOT, tickets_channel=TICKETS, **options)


def test_a_dm_is_one_conversation_per_user_answered_top_level() -> None:
    found = classify(im_message("Where is my order?", channel="D0ANA", user="U0ANA", ts="100.000001"))
    assert isinstance(found, Customer) and found.kind == "im" and not found.if_conversation
    message = found.message
    assert message.channel == "slack" and message.external_id == "D0ANA:100.000001"
    assert message.key == f"{TEAM}/D0ANA/U0ANA"
    assert message.text == "Where is my order?"
    # Unverified until prepare has Slack's record of the user: a message the core answers without it is unverified.
    assert message.identity == Identity(external_id=f"{TEAM}/U0ANA", verified=False)
    assert dict(message.address) == {"channel": "D0ANA", "team": TEAM, "user": "U0ANA", "ts": "100.000001",
                                     "thread_ts": None, "kind": "im"}  # fmt: skip


def test_a_dm_in_a_thread_stays_the_users_conversation_answered_in_that_thread() -> None:
    event = im_message("and this?", channel="D0ANA", user="U0ANA", ts="101.000001", thread_ts="100.000001")
    found = classify(event)
    assert isinstance(found, Customer) and found.message.key == f"{TEAM}/D0ANA/U0ANA"
    assert found.message.address["thread_ts"] == "100.000001"


def test_dm_replies_in_threads_when_configured() -> None:
    found = classify(im_message("hi", channel="D0ANA", user="U0ANA", ts="100.000001"), dm_replies="thread")
    assert isinstance(found, Customer) and found.message.address["thread_ts"] == "100.000001"


def test_a_mention_starts_a_thread_conversation_without_the_mention() -> None:
    found = classify(app_mention(f"<@{BOT}> my parcel is late", channel="C0SHOP", user="U0ANA", ts="200.000001"))
    assert isinstance(found, Customer) and found.kind == "channel"
    assert found.message.key == f"{TEAM}/C0SHOP/200.000001/U0ANA"
    assert found.message.text == "my parcel is late"
    assert found.message.address["thread_ts"] == "200.000001"


def test_a_mention_inside_a_thread_is_that_threads_conversation() -> None:
    event = app_mention(f"hey <@{BOT}|supportbot>, still late", channel="C0SHOP", user="U0ANA", ts="201.1",
                        thread_ts="200.000001")  # fmt: skip
    found = classify(event)
    assert isinstance(found, Customer) and found.message.key == f"{TEAM}/C0SHOP/200.000001/U0ANA"
    assert found.message.text == "hey , still late"


def test_each_person_in_a_channel_thread_has_their_own_conversation_in_that_thread() -> None:
    ana = classify(app_mention(f"<@{BOT}> my parcel is late", channel="C0SHOP", user="U0ANA", ts="200.1"))
    bob = classify(app_mention(f"<@{BOT}> mine too", channel="C0SHOP", user="U0BOB", ts="201.1", thread_ts="200.1"))
    bob_again = classify(message_event("any news?", channel="C0SHOP", user="U0BOB", ts="202.1", thread_ts="200.1"))
    assert isinstance(ana, Customer) and isinstance(bob, Customer) and isinstance(bob_again, Customer)
    assert ana.message.key == f"{TEAM}/C0SHOP/200.1/U0ANA"
    assert bob.message.key == bob_again.message.key == f"{TEAM}/C0SHOP/200.1/U0BOB"
    assert bob_again.if_conversation  # answered only if Bob asked the bot in this thread himself
    assert ana.message.address["thread_ts"] == bob.message.address["thread_ts"] == "200.1"  # replies in the thread
    assert bob.message.identity.external_id == f"{TEAM}/U0BOB"


def test_the_message_twin_of_a_mention_is_the_same_message() -> None:
    mention = classify(app_mention(f"<@{BOT}> hi", channel="C0SHOP", user="U0ANA", ts="300.1", thread_ts="299.1"))
    twin = classify(message_event(f"<@{BOT}> hi", channel="C0SHOP", user="U0ANA", ts="300.1", thread_ts="299.1"))
    assert isinstance(mention, Customer) and isinstance(twin, Customer)
    assert mention.message.external_id == twin.message.external_id and mention.message.key == twin.message.key
    assert twin.if_conversation  # answered only in a thread that already is a conversation


def test_assistant_threads_are_one_conversation_per_thread() -> None:
    event = im_message("Help me", channel="D0ANA", user="U0ANA", ts="401.1", thread_ts="400.1")
    event["assistant_thread"] = {"action_token": "10.20.abc"}
    found = classify(event)
    assert isinstance(found, Customer) and found.kind == "assistant"
    assert found.message.key == f"{TEAM}/D0ANA/400.1" and found.message.address["kind"] == "assistant"
    seen = classify(
        im_message("Help me", channel="D0ANA", user="U0ANA", ts="402.1", thread_ts="400.1"),
        assistant_threads=lambda channel, thread: (channel, thread) == ("D0ANA", "400.1"),
    )
    assert isinstance(seen, Customer) and seen.kind == "assistant"


@pytest.mark.parametrize("builder", [assistant_thread_started, assistant_thread_context_changed])
def test_assistant_thread_events(builder: Any) -> None:
    found = classify(builder(channel="D0ANA", user="U0ANA", thread_ts="400.1"))
    assert found == ThreadStarted(channel="D0ANA", thread_ts="400.1", user="U0ANA")


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (message_event("edited", channel="D0ANA", user="U0ANA", channel_type="im", subtype="message_changed"),
         "subtype message_changed"),
        (message_event("gone", channel="D0ANA", user="U0ANA", channel_type="im", subtype="message_deleted"),
         "subtype message_deleted"),
        (message_event("joined", channel="C0SHOP", user="U0ANA", subtype="channel_join"), "subtype channel_join"),
        (message_event("hi", channel="C0SHOP", user="U0ANA", subtype="bot_message"), "subtype bot_message"),
        (message_event("beep", channel="D0ANA", user="U0OTHERBOT", channel_type="im", bot_id="B0OTHER"),
         "a bot's message"),
        (im_message("my own reply", channel="D0ANA", user=BOT), "the bot's own message"),
        (message_event("chatter", channel="C0SHOP", user="U0ANA"), "channel message without a mention"),
        (im_message("", channel="D0ANA", user="U0ANA"), "empty message"),
        (message_event("new?", channel=TICKETS, user="U0OP"), "tickets channel, not a reply in a ticket's thread"),
        (app_mention(f"<@{BOT}> hi", channel=TICKETS, user="U0OP", thread_ts="1.1"),
         "tickets channel, not a reply in a ticket's thread"),
        ({"type": "reaction_added", "user": "U0ANA"}, "event reaction_added"),
    ],
)  # fmt: skip
def test_what_the_bot_never_answers(event: dict[str, Any], reason: str) -> None:
    assert classify(event) == Ignored(reason)


def test_own_messages_are_known_from_the_envelope_when_auth_test_failed() -> None:
    found = classify_event(event_callback(im_message("echo", channel="D0ANA", user=BOT)), bot_user_id=None,
                           tickets_channel=None)  # fmt: skip
    assert found == Ignored("the bot's own message")


def test_a_shared_file_is_a_message_with_files() -> None:
    files = [{"id": "F1", "name": "parcel.png", "mimetype": "image/png", "size": 10,
              "url_private_download": "https://files.slack.com/x/download/parcel.png"}]  # fmt: skip
    found = classify(im_message("look", channel="D0ANA", user="U0ANA", files=files))
    assert isinstance(found, Customer)
    assert found.message.data == {"files": [{"id": "F1", "name": "parcel.png", "mimetype": "image/png", "size": 10,
                                             "url": "https://files.slack.com/x/download/parcel.png"}]}  # fmt: skip
    only_file = classify(im_message("", channel="D0ANA", user="U0ANA", files=files))
    assert isinstance(only_file, Customer) and only_file.message.text == ""


def test_slack_formatting_reaches_the_model_as_plain_text() -> None:
    found = classify(im_message("order &lt;A1001&gt; <https://shop.example/o/1|here>", channel="D0ANA", user="U0A"))
    assert isinstance(found, Customer) and found.message.text == "order <A1001> here (https://shop.example/o/1)"


def test_a_reply_in_a_ticket_thread_is_an_operators() -> None:
    found = classify(message_event("We sent a new one &amp; tracked it", channel=TICKETS, user="U0OP", ts="501.1",
                                   thread_ts="500.1"))  # fmt: skip
    assert found == Operator(channel=TICKETS, ts="501.1", thread_ts="500.1", user="U0OP",
                             text="We sent a new one & tracked it")  # fmt: skip


@pytest.mark.parametrize(
    ("text", "command"),
    [("hand back", True), ("Hand back to the bot.", True), ("handback", True), ("!hand-back", True),
     ("hand back the parcel", False), ("please hand back", False)],
)  # fmt: skip
def test_hand_back_command(text: str, command: bool) -> None:
    assert is_hand_back(text) is command


def test_a_yes_button_is_the_customer_typing_yes_once_per_question() -> None:
    value = ConfirmValue(key=f"{TEAM}/D0ANA/U0ANA", address={"channel": "D0ANA", "user": "U0ANA"}).dump()
    pressed = classify_action(block_actions_payload(action_id=CONFIRM_YES, value=value, user="U0ANA", channel="D0ANA",
                                                    message_ts="600.1"))  # fmt: skip
    assert isinstance(pressed, ButtonPress)
    assert pressed.message.text == "yes" and pressed.message.key == f"{TEAM}/D0ANA/U0ANA"
    assert pressed.message.external_id == "D0ANA:600.1:answer"
    assert pressed.message.identity == Identity(external_id=f"{TEAM}/U0ANA", verified=False)  # prepare verifies
    no = classify_action(block_actions_payload(action_id=CONFIRM_NO, value=value, user="U0ANA", channel="D0ANA",
                                               message_ts="600.1"))  # fmt: skip
    assert isinstance(no, ButtonPress) and no.message.text == "no"
    assert no.message.external_id == pressed.message.external_id  # the second answer to one question is a duplicate


def test_nobody_else_answers_a_customers_question() -> None:
    value = ConfirmValue(key="k", address={"channel": "C0SHOP", "user": "U0ANA"}).dump()
    found = classify_action(block_actions_payload(action_id=CONFIRM_YES, value=value, user="U0BOB", channel="C0SHOP",
                                                  message_ts="600.1"))  # fmt: skip
    assert found == Ignored("someone else's confirmation")


def test_a_button_in_a_channel_thread_answers_only_the_pressers_own_conversation() -> None:
    thread = {"channel": "C0SHOP", "team": TEAM, "thread_ts": "200.1", "kind": "channel"}
    ana = ConfirmValue(key=f"{TEAM}/C0SHOP/200.1/U0ANA", address={**thread, "user": "U0ANA"}).dump()
    pressed = classify_action(block_actions_payload(action_id=CONFIRM_YES, value=ana, user="U0ANA", channel="C0SHOP",
                                                    message_ts="600.1"))  # fmt: skip
    assert isinstance(pressed, ButtonPress) and pressed.message.key == f"{TEAM}/C0SHOP/200.1/U0ANA"
    # Bob cannot answer Ana's question, even with a value naming him as the last writer.
    for address in ({**thread, "user": "U0ANA"}, {**thread, "user": "U0BOB"}, thread):
        value = ConfirmValue(key=f"{TEAM}/C0SHOP/200.1/U0ANA", address=address).dump()
        found = classify_action(block_actions_payload(action_id=CONFIRM_YES, value=value, user="U0BOB",
                                                      channel="C0SHOP", message_ts="600.1"))  # fmt: skip
        assert found == Ignored("someone else's confirmation")


def test_the_hand_back_button() -> None:
    found = classify_action(block_actions_payload(action_id=HAND_BACK, value="42", user="U0OP", channel=TICKETS,
                                                  message_ts="700.1"))  # fmt: skip
    assert isinstance(found, HandBack) and found.ticket_id == 42 and found.user == "U0OP"


@pytest.mark.parametrize(
    ("action_id", "value"), [(HAND_BACK, "not a number"), (CONFIRM_YES, "{}"), (CONFIRM_YES, "nope"), ("other", "1")]
)
def test_buttons_that_mean_nothing(action_id: str, value: str) -> None:
    found = classify_action(block_actions_payload(action_id=action_id, value=value, user="U0A", channel="D0A",
                                                  message_ts="1.1"))  # fmt: skip
    assert isinstance(found, Ignored)
