"""The ``connectors.web`` section of config.yaml: the widget, its demo page and the REST/SSE API."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

__all__ = ["WebRateLimits", "WebSettings"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


class WebRateLimits(_Section):
    """Per worker process; a refused request gets 429 with Retry-After."""

    requests_per_minute_per_ip: int = Field(
        300, ge=1, description="Requests to the conversation API one client address may make in a minute."
    )
    conversations_per_hour_per_ip: int = Field(
        60, ge=1, description="Conversations one client address may start in an hour."
    )
    messages_per_minute_per_conversation: int = Field(
        20, ge=1, description="Messages the customer may send in one conversation in a minute."
    )
    connections_per_conversation: int = Field(
        10, ge=1, description="Live connections (open widget tabs) one conversation may have at once."
    )


class WebSettings(_Section):
    """The web widget and the conversation REST/SSE API (``connectors/web``)."""

    enabled: bool = Field(
        True, description="Serve the chat widget (/widget.js), its demo page (/) and the REST/SSE API."
    )
    allowed_origins: tuple[str, ...] = Field(
        (),
        description=(
            "Sites that may embed the widget, as scheme://host[:port] with no path; the server's own origin (the "
            "demo page) is always allowed."
        ),
        examples=[["https://acme.example"]],
    )
    identity_secret: SecretStr | None = Field(
        None,
        description=(
            "A secret (32+ random bytes; write ${VAR}) your backend signs signed-in users with: a JWT, HS256, "
            "{sub, email, name, exp} as user.token (recommended; verifies all its claims), or user.hash = "
            "HMAC-SHA256 of the id (verifies the id only, not the email); see README 'Embedding the widget in your "
            "site'. Empty: every widget visitor is unverified."
        ),
        examples=["${WIDGET_IDENTITY_SECRET:-}"],
    )
    title: str | None = Field(
        None, max_length=80, description='The panel\'s title (at most 80 characters); null: "<company.name> support".'
    )
    color: str = Field("#0b6e4f", pattern=r"^#[0-9a-fA-F]{6}$", description="The widget's theme colour, as #rrggbb.")
    position: Literal["right", "left"] = Field("right", description="The corner of the page the widget sits in.")
    greeting: str | None = Field(
        None,
        max_length=500,
        description=(
            "Shown before a conversation starts (at most 500 characters); null: none (the flow's greeting follows)."
        ),
    )
    demo_page: bool = Field(True, description="Serve the demo shop page at /.")
    rate_limits: WebRateLimits = Field(
        WebRateLimits(), description="Per worker process; refused with HTTP 429 and Retry-After."
    )

    @field_validator("identity_secret", mode="before")
    @classmethod
    def _empty_secret(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            if not _ORIGIN.match(origin):
                raise ValueError(
                    f"{origin!r} is not an origin; write scheme://host[:port] with no path, "
                    f"e.g. https://shop.example.com"
                )
        return tuple(origin.lower() for origin in value)
