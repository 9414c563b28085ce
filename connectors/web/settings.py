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

    requests_per_minute_per_ip: int = Field(300, ge=1)
    conversations_per_hour_per_ip: int = Field(60, ge=1)
    messages_per_minute_per_conversation: int = Field(20, ge=1)
    connections_per_conversation: int = Field(10, ge=1)


class WebSettings(_Section):
    """The web widget and the conversation REST/SSE API (``connectors/web``)."""

    enabled: bool = True
    allowed_origins: tuple[str, ...] = ()
    identity_secret: SecretStr | None = None
    title: str | None = Field(None, max_length=80)
    color: str = Field("#0b6e4f", pattern=r"^#[0-9a-fA-F]{6}$")
    position: Literal["right", "left"] = "right"
    greeting: str | None = Field(None, max_length=500)
    demo_page: bool = True
    rate_limits: WebRateLimits = WebRateLimits()

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
