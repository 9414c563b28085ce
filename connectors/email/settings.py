"""``connectors.email`` in config.yaml: the support mailbox, its IMAP and SMTP servers, and who is trusted.

Every problem is reported as ``config.yaml:LINE: connectors.email.KEY: problem; fix`` by the core's
config loader, which validates the section with this model.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

__all__ = ["EmailSettings", "ImapSettings", "SmtpSettings"]

_ADDRESS = re.compile(r"^[^@\s<>,;\"]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
_LOOPBACK = frozenset({"127.0.0.1", "::1", "[::1]", "localhost"})
_HOST = re.compile(r"^[A-Za-z0-9.:\[\]-]+$")


def _empty_is_none(value: Any) -> Any:
    # ${IMAP_PASSWORD:-} of an unset variable is "": the same as not set.
    return None if isinstance(value, str) and not value.strip() else value


class _Server(BaseModel):
    """A mail server supportbot connects to (IMAP or SMTP)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(
        "127.0.0.1",
        description="The server's host name or address.",
        examples=["imap.acme.example", "smtp.acme.example"],
    )
    port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="The TCP port; null: IMAP 993 with ssl, else 143; SMTP 465 with ssl, 587 with starttls, else 25.",
    )
    ssl: bool = Field(False, description="Implicit TLS (IMAP 993, SMTP 465); never together with starttls.")
    starttls: bool = Field(
        False,
        description="Upgrade a plain connection with STARTTLS (IMAP 143, SMTP 587); refused if the server cannot.",
    )
    username: str | None = Field(
        None,
        description="The login; empty: none (with password empty too: an SMTP relay that needs no login).",
        examples=["help@acme.example"],
    )
    password: SecretStr | None = Field(
        None,
        description="A secret (write ${VAR}): the login's password, an app password for Gmail or Microsoft 365.",
        examples=["${IMAP_PASSWORD:-}", "${SMTP_PASSWORD:-}"],
    )
    ca_file: str | None = Field(
        None,
        description="A PEM file of CA certificates to trust instead of the system's (a private CA); null: the system's "
        "CAs.",
    )
    timeout_s: float = Field(
        30.0, gt=0, le=600, description="The longest wait for one answer of the server, in seconds (at most 600)."
    )

    @field_validator("username", "password", "ca_file", mode="before")
    @classmethod
    def _empty(cls, value: Any) -> Any:
        return _empty_is_none(value)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        value = value.strip()
        if not _HOST.match(value):
            raise ValueError(f"{value!r} is not a host name or address; write one like mail.acme.example")
        return value

    @model_validator(mode="after")
    def _tls(self) -> _Server:
        if self.ssl and self.starttls:
            raise ValueError(
                "ssl and starttls are both true; choose one: ssl for implicit TLS (IMAP 993, SMTP 465), "
                "starttls to upgrade a plain connection (IMAP 143, SMTP 587)"
            )
        return self


class ImapSettings(_Server):
    """Where the support mailbox is read (IMAP; IDLE when the server offers it, else polled)."""

    mailbox: str = Field("INBOX", description="The folder answered.")
    idle: bool = Field(True, description="Wait for new mail with IDLE when the server offers it; false: poll.")
    idle_renew_s: float = Field(
        1500.0,
        ge=1,
        le=1740,
        description="How often IDLE is re-issued, in seconds (1-1740: servers drop it after 30 minutes; RFC 2177).",
    )
    move_to: str | None = Field(
        None,
        description=(
            "A folder a mail is moved to once it is stored (created if missing); null: it is flagged \\Seen and stays."
        ),
    )

    @field_validator("move_to", mode="before")
    @classmethod
    def _empty_folder(cls, value: Any) -> Any:
        return _empty_is_none(value)

    @property
    def effective_port(self) -> int:
        return self.port or (993 if self.ssl else 143)


class SmtpSettings(_Server):
    """Where replies are sent (SMTP submission); username and password both empty: a local relay that needs no
    login."""

    @property
    def effective_port(self) -> int:
        return self.port or (465 if self.ssl else 587 if self.starttls else 25)


class EmailSettings(BaseModel):
    """The email connector's section (``connectors.email``): a support mailbox read over IMAP and answered over
    SMTP; see README "Email" and docs/email.md."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(False, description="Answer the mailbox.")
    address: str | None = Field(
        None,
        validate_default=True,
        description="The support address customers write to; replies come from it. Required when enabled.",
        examples=["help@acme.example"],
    )
    from_name: str | None = Field(None, description="The name replies are signed with; null: company.name.")
    imap: ImapSettings = Field(default_factory=ImapSettings, description="Where mail is read.")
    smtp: SmtpSettings = Field(default_factory=SmtpSettings, description="Where replies are sent.")
    trusted_authserv_id: str | None = Field(
        None,
        description=(
            "The host name your own mail server writes into the Authentication-Results header it adds (Gmail: "
            "mx.google.com; Microsoft 365: see docs/email.md). A sender is verified only by dmarc=pass in that "
            "server's header; null: no email sender is verified (order details are never disclosed)."
        ),
        examples=["mx.google.com"],
    )
    poll_interval_s: float = Field(
        60.0,
        ge=1,
        le=3600,
        description="How often the mailbox is checked when the server has no IDLE, in seconds (1-3600).",
    )
    replies_per_sender_per_hour: int = Field(
        5,
        ge=1,
        le=1000,
        description=(
            "The bot's replies to one address in an hour (1-1000); more are not sent but shown to operators as a "
            "ticket (stops a ping-pong with an auto-responder)."
        ),
    )
    max_mail_bytes: int = Field(
        25_000_000,
        ge=100_000,
        description=(
            "A bigger mail is read only up to this many bytes (at least 100000): its text, usually at the top, is "
            "answered; the rest is left out and said so."
        ),
    )
    retry_max_s: float = Field(
        60.0,
        ge=1,
        le=3600,
        description="The longest wait between two tries of a reply the SMTP server deferred (4xx), 1-3600 seconds.",
    )
    html: bool = Field(True, description="Send an HTML part beside the plain text.")

    @field_validator("address", "from_name", "trusted_authserv_id", mode="before")
    @classmethod
    def _empty(cls, value: Any) -> Any:
        return _empty_is_none(value)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            if info.data.get("enabled"):
                raise ValueError("required when the email connector is enabled; write the support address, "
                                 "e.g. address: help@acme.example")  # fmt: skip
            return None
        value = value.strip()
        if not _ADDRESS.match(value):
            raise ValueError(f"{value!r} is not an email address; write one like help@acme.example")
        return value.lower()

    @field_validator("trusted_authserv_id")
    @classmethod
    def _authserv(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lower()
        if not re.fullmatch(r"[a-z0-9.-]+", value):
            raise ValueError(
                f"{value!r} is not a host name; write the name your mail server puts first in the "
                "Authentication-Results header it adds (e.g. mx.google.com), see docs/email.md"
            )
        return value

    @model_validator(mode="after")
    def _logins(self) -> EmailSettings:
        for name, server in (("imap", self.imap), ("smtp", self.smtp)):
            if self.enabled and (server.username is None) != (server.password is None):
                raise ValueError(
                    f"{name}: set both username and password (an app password for Gmail or Microsoft 365), or "
                    "neither for a server that needs no login"
                )
            plain = not (server.ssl or server.starttls)
            if self.enabled and server.password is not None and plain and server.host not in _LOOPBACK:
                raise ValueError(
                    f"{name}: the password would cross the network unencrypted; set {name}.ssl: true "
                    f"({'993' if name == 'imap' else '465'}) or {name}.starttls: true "
                    f"({'143' if name == 'imap' else '587'})"
                )
        return self

    @property
    def domain(self) -> str:
        """The support address's domain (Message-IDs of replies are made on it)."""
        return (self.address or "localhost").rpartition("@")[2]
