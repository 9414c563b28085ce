"""``connectors.slack``: defaults, and a message that says how to fix each mistake."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from connectors.slack.settings import SlackSettings

BOT = "xoxb-1-2-abc"
SECRET = "8f742231b10e8888abcd99001185a5fe"


def problems(**section: Any) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        SlackSettings.model_validate(section)
    return {".".join(str(p) for p in e["loc"]): e["msg"] for e in caught.value.errors()}


def test_disabled_needs_nothing_and_empty_variables_are_unset() -> None:
    settings = SlackSettings.model_validate({"bot_token": "", "signing_secret": "", "app_token": "  "})
    assert settings.enabled is False and settings.bot_token is None and settings.app_token is None
    assert settings.api_url == "https://slack.com/api/" and settings.streaming == "auto"


def test_http_mode_and_socket_mode() -> None:
    http = SlackSettings(enabled=True, bot_token=BOT, signing_secret=SECRET)  # type: ignore[arg-type]
    assert not http.socket_mode and http.bot_token is not None and http.bot_token.get_secret_value() == BOT
    socket = SlackSettings(enabled=True, bot_token=BOT, app_token="xapp-1-A1-2-x")  # type: ignore[arg-type]
    assert socket.socket_mode and socket.signing_secret is None
    assert "xoxb" not in repr(http) and SECRET not in repr(http)


@pytest.mark.parametrize(
    ("section", "key", "says"),
    [
        ({"enabled": True, "signing_secret": SECRET}, "bot_token", "Bot User OAuth Token (xoxb-...)"),
        ({"bot_token": "xoxp-123"}, "bot_token", "this is a user token"),
        ({"bot_token": "xapp-1-2"}, "bot_token", "that one goes in app_token"),
        ({"enabled": True, "bot_token": BOT}, "app_token", "set signing_secret (HTTP Events API"),
        ({"signing_secret": "xoxb-not-a-secret"}, "signing_secret", "copy 'Signing Secret' from 'Basic Information'"),
        ({"app_token": "xoxb-1"}, "app_token", "not an app-level token"),
        ({"api_url": "slack.com/api"}, "api_url", "is not an http(s) URL"),
        ({"tickets_channel": "Support Tickets"}, "tickets_channel", "neither a channel id"),
        ({"streaming": "fast"}, "streaming", "'auto', 'native', 'update' or 'off'"),
        ({"update_interval_s": 0.2}, "update_interval_s", "greater than or equal to 1"),
        ({"bot_tokn": BOT}, "bot_tokn", "Extra inputs are not permitted"),
    ],
)
def test_mistakes_say_how_to_fix_them(section: dict[str, Any], key: str, says: str) -> None:
    found = problems(**section)
    assert key in found and says in found[key], found


def test_a_bad_signing_secret_is_reported_once() -> None:
    assert list(problems(enabled=True, bot_token=BOT, signing_secret="nothex")) == ["signing_secret"]


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("C0123ABCD", "C0123ABCD"),
        ("G0123", "G0123"),
        ("#support-tickets", "support-tickets"),
        ("ops.tickets", "ops.tickets"),
    ],
)
def test_tickets_channel_by_id_or_name(given: str, kept: str) -> None:
    assert SlackSettings(tickets_channel=given).tickets_channel == kept


def test_api_url_gets_its_slash() -> None:
    assert SlackSettings(api_url="http://127.0.0.1:9/api").api_url == "http://127.0.0.1:9/api/"
