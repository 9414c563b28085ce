"""``connectors.slack`` in config.yaml: the Slack app's credentials and how the connector behaves.

Every problem is reported as ``config.yaml:LINE: connectors.slack.KEY: problem; fix`` by the core's
config loader, which validates the section with this model.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

__all__ = ["DEFAULT_API_URL", "SlackSettings"]

DEFAULT_API_URL = "https://slack.com/api/"
_CHANNEL_ID = re.compile(r"^[CG][A-Z0-9]{2,}$")
_CHANNEL_NAME = re.compile(r"^#?[a-z0-9][a-z0-9._-]{0,79}$")
_WHERE = "your Slack app's settings (https://api.slack.com/apps)"


def _empty_is_none(value: Any) -> Any:
    # ${SLACK_APP_TOKEN:-} of an unset variable is "": the same as not set.
    return None if isinstance(value, str) and not value.strip() else value


class SlackSettings(BaseModel):
    """The Slack connector's section (``connectors.slack``): DMs, @mentions and assistant threads.

    Each field's description says what it does; README "Slack" shows how to set up the app.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        False,
        description="Serve Slack: POST /slack/events and /slack/interactions, or Socket Mode when app_token is set.",
    )
    bot_token: SecretStr | None = Field(
        None,
        validate_default=True,
        description=(
            "A secret (write ${VAR}): the Bot User OAuth Token (xoxb-...) from 'OAuth & Permissions' in your Slack "
            "app's settings. Required when enabled."
        ),
        examples=["${SLACK_BOT_TOKEN:-}"],
    )
    signing_secret: SecretStr | None = Field(
        None,
        validate_default=True,
        description=(
            "A secret (write ${VAR}): the app's Signing Secret ('Basic Information'); checks that HTTP requests to "
            "POST /slack/events come from Slack. Needed unless app_token is set."
        ),
        examples=["${SLACK_SIGNING_SECRET:-}"],
    )
    app_token: SecretStr | None = Field(
        None,
        validate_default=True,
        description=(
            "A secret (write ${VAR}): an app-level token (xapp-..., scope connections:write). Set: events arrive "
            "over Socket Mode (no public URL needed) instead of HTTP."
        ),
        examples=["${SLACK_APP_TOKEN:-}"],
    )
    api_url: str = Field(
        DEFAULT_API_URL,
        description="Slack's Web API base URL (a test or a proxy may replace it).",
        examples=[DEFAULT_API_URL],
    )
    tickets_channel: str | None = Field(
        None,
        description=(
            "Where new tickets are announced for operators, who answer the customer in the announcement's thread "
            "('hand back' or the button gives the conversation back to the bot): a channel id (C0123ABCD) or a "
            "name (#support-tickets). The bot must be a member of it. null: no announcements."
        ),
        examples=["#support-tickets", "C0123ABCD"],
    )
    streaming: Literal["auto", "native", "update", "off"] = Field(
        "auto",
        description=(
            "How a reply is shown while the model writes it: auto: Slack's native streaming in threads, one message "
            "edited about once a second elsewhere; native: only native streaming (elsewhere the reply is posted "
            "when complete); update: always the edited message; off: the reply is posted when complete."
        ),
    )
    dm_replies: Literal["top", "thread"] = Field(
        "top",
        description=(
            "In a direct message, answer top-level or in a thread under the customer's message (Slack streams "
            "natively only in threads); a customer writing in a thread is always answered there."
        ),
    )
    update_interval_s: float = Field(
        1.0,
        ge=1.0,
        le=60.0,
        description="The least time between two live updates of one message, in seconds (1-60; Slack's limits).",
    )
    max_file_bytes: int = Field(
        5_000_000,
        ge=1,
        description=(
            "The largest image downloaded from a customer's message, in bytes (also capped by "
            "limits.max_image_bytes); bigger files and other file types are left out."
        ),
    )
    user_cache_s: float = Field(
        300.0,
        ge=0,
        description="Seconds a customer's Slack profile (name, verified email) is kept before it is asked again.",
    )

    @field_validator("bot_token", "signing_secret", "app_token", "tickets_channel", mode="before")
    @classmethod
    def _empty(cls, value: Any) -> Any:
        return _empty_is_none(value)

    @field_validator("bot_token")
    @classmethod
    def _bot_token(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None:
            if info.data.get("enabled"):
                raise ValueError(
                    "required when the Slack connector is enabled; set it to the Bot User OAuth Token (xoxb-...) "
                    f"from 'OAuth & Permissions' in {_WHERE}, e.g. bot_token: ${{SLACK_BOT_TOKEN}}"
                )
            return None
        token = value.get_secret_value().strip()
        if not token.startswith("xoxb-"):
            kind = {"xoxp-": "a user token", "xapp-": "an app-level token (that one goes in app_token)"}.get(
                token[:5], "not a bot token"
            )
            raise ValueError(
                f"this is {kind}; use the Bot User OAuth Token (xoxb-...) from 'OAuth & Permissions' in {_WHERE}"
            )
        return SecretStr(token)

    @field_validator("signing_secret")
    @classmethod
    def _signing_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None  # needed only for HTTP: checked with app_token below
        secret = value.get_secret_value().strip()
        if not re.fullmatch(r"[0-9a-f]{16,}", secret):
            raise ValueError(
                "not a Slack signing secret (hex digits); copy 'Signing Secret' from 'Basic Information' in "
                f"{_WHERE}, not the client secret or a token"
            )
        return SecretStr(secret)

    @field_validator("app_token")
    @classmethod
    def _app_token(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None:
            # A signing_secret that failed its own check is not in info.data: reported once, there.
            if info.data.get("enabled") and "signing_secret" in info.data and info.data["signing_secret"] is None:
                raise ValueError(
                    "the Slack connector needs a way to receive events: set signing_secret (HTTP Events API at "
                    "POST /slack/events) or app_token (Socket Mode, an xapp-... token with connections:write from "
                    f"'Basic Information' > 'App-Level Tokens' in {_WHERE})"
                )
            return None
        token = value.get_secret_value().strip()
        if not token.startswith("xapp-"):
            raise ValueError(
                "not an app-level token; create one (xapp-..., scope connections:write) under 'Basic Information' > "
                f"'App-Level Tokens' in {_WHERE}, or leave app_token empty to receive events over HTTP"
            )
        return SecretStr(token)

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
            raise ValueError(f"{value!r} is not an http(s) URL; write Slack's, {DEFAULT_API_URL}")
        return value if value.endswith("/") else value + "/"

    @field_validator("tickets_channel")
    @classmethod
    def _tickets_channel(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if _CHANNEL_ID.match(value):
            return value
        if _CHANNEL_NAME.match(value):
            return value.removeprefix("#")
        raise ValueError(
            f"{value!r} is neither a channel id (like C0123ABCD) nor a channel name (like #support-tickets: "
            "lower-case letters, digits, '-', '_' and '.'); write one of them and invite the bot to that channel"
        )

    @property
    def socket_mode(self) -> bool:
        """Events arrive over Socket Mode (an app token is set) rather than HTTP."""
        return self.app_token is not None
