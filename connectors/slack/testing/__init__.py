"""A fake Slack on 127.0.0.1 that speaks Slack's wire format: the Web API, Socket Mode and file downloads.

The Slack connector's tests and benchmark point slack_sdk at it (``AsyncWebClient(base_url=fake.api_url)``,
``SocketModeClient(fake.app_token, web_client=...)``); the module-level helpers build, encode, sign and send
events exactly as Slack sends them to an Events API endpoint.

Example::

    async with FakeSlack() as slack:
        slack.add_user("U0CUSTOMER", email="ada@example.com")
        slack.add_channel("D0CUSTOMER", is_im=True, user="U0CUSTOMER")
        event = slack.user_message("D0CUSTOMER", "Where is my order?", user="U0CUSTOMER")
        reply = await send_event(http, f"{app_url}/slack/events", event, SIGNING_SECRET)
        await slack.wait_until(lambda: len(slack.messages("D0CUSTOMER")) == 2)

What it holds to, from Slack's method reference and slack_sdk's source:
- Every Web API answer is HTTP 200 with ``{"ok": true|false, ...}``, except a rate limit: HTTP 429,
  ``Retry-After: <seconds>`` and ``{"ok": false, "error": "ratelimited"}``. Bodies may be JSON (token in the
  ``Authorization: Bearer`` header) or form-encoded (token in the header or a ``token`` field), arguments may
  also come in the query string (slack_sdk sends ``users.info`` and ``conversations.*`` as GET with query
  parameters), and JSON-typed arguments (``blocks``, ``metadata``, ``chunks``...) may arrive as JSON strings.
- The bot token works for every method but ``apps.connections.open``, which needs the app-level token; the
  wrong kind answers ``not_allowed_token_type``.
- Streams (``chat.startStream``/``appendStream``/``stopStream``) need a thread, and a recipient user and team
  outside DMs (DM ids start with ``D``); a stream ends when stopped or after ``stream_ttl`` seconds, after
  which appends and stops answer ``message_not_in_streaming_state``; a streaming message cannot be edited
  (``streaming_state_conflict``).
- ``conversations.history``/``replies`` return a message's ``metadata.event_payload`` only with
  ``include_all_metadata=true`` (without it, just the ``event_type``).
- Socket Mode: ``apps.connections.open`` issues a one-time ``ws://`` URL; the socket greets with ``hello``;
  each envelope goes to one connected socket (as Slack does with several connections); a client acks with
  ``{"envelope_id": ...}``.
- Files are served only with the bot token; without it Slack answers a redirect to an HTML sign-in page.

The modules: ``wire`` encodes, signs and sends; ``events`` builds events and payloads; ``server`` is
``FakeSlack`` (HTTP app, auth, recording, failure injection, waiting), built on ``workspace`` (users,
channels, messages, files, streams), ``methods`` (the Web API methods) and ``socket_mode``; ``defaults``
holds the fake workspace's ids and tokens and Slack's rate tiers, ``records`` what the fake recorded.

It runs in the same process as the code under test (the benchmark counts its CPU time), so it keeps state in
plain dicts and does no work per request beyond what a case needs.
"""

from __future__ import annotations

from connectors.slack.testing.defaults import (
    DEFAULT_APP_ID,
    DEFAULT_APP_TOKEN,
    DEFAULT_BOT_ID,
    DEFAULT_BOT_TOKEN,
    DEFAULT_BOT_USER_ID,
    DEFAULT_TEAM_ID,
    TIER_LIMITS,
)
from connectors.slack.testing.events import (
    app_mention,
    assistant_thread_context_changed,
    assistant_thread_started,
    block_actions_payload,
    event_callback,
    im_message,
    message_event,
    url_verification,
)
from connectors.slack.testing.records import Ack, Call
from connectors.slack.testing.server import FakeSlack
from connectors.slack.testing.wire import EventReply, form_body, send_event, signed_headers, slack_json, slack_ts

__all__ = [
    "DEFAULT_APP_ID",
    "DEFAULT_APP_TOKEN",
    "DEFAULT_BOT_ID",
    "DEFAULT_BOT_TOKEN",
    "DEFAULT_BOT_USER_ID",
    "DEFAULT_TEAM_ID",
    "TIER_LIMITS",
    "Ack",
    "Call",
    "EventReply",
    "FakeSlack",
    "app_mention",
    "assistant_thread_context_changed",
    "assistant_thread_started",
    "block_actions_payload",
    "event_callback",
    "form_body",
    "im_message",
    "message_event",
    "send_event",
    "signed_headers",
    "slack_json",
    "slack_ts",
    "url_verification",
]
