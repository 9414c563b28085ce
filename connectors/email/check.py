"""``python -m connectors.email check [-c config.yaml]``: log in to the mailbox and the SMTP server once.

For setting the connector up: it reads ``connectors.email`` as ``supportbot serve`` would, logs in to
IMAP (TLS, STARTTLS or plain, as configured), selects the mailbox, logs in to SMTP, and says what it
found or what failed and how to fix it. It reads no mail, flags nothing and sends nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import aiosmtplib

from connectors.email.imap import Mailbox, tls_context
from connectors.email.settings import EmailSettings, SmtpSettings
from supportbot.config import load_config
from supportbot.errors import SupportbotError

__all__ = ["check", "main"]


async def _smtp(settings: SmtpSettings) -> tuple[str, str | None]:
    secure = settings.ssl or settings.starttls
    client = aiosmtplib.SMTP(
        hostname=settings.host, port=settings.effective_port, use_tls=settings.ssl, start_tls=settings.starttls,
        tls_context=tls_context(settings.ca_file) if secure else None, timeout=settings.timeout_s,
    )  # fmt: skip
    async with client:
        if settings.username is not None and settings.password is not None:
            await client.login(settings.username, settings.password.get_secret_value())
        size = client.esmtp_extensions.get("size")
        return "logged in" if settings.username else "connected (no login)", size


async def check(settings: EmailSettings) -> list[tuple[str, bool, str]]:
    """``(what, ok, detail)`` for the IMAP login, the SMTP login and the identity setting."""
    found: list[tuple[str, bool, str]] = []
    imap, smtp = settings.imap, settings.smtp
    try:
        found.append((f"IMAP {imap.host}:{imap.effective_port}", True, await Mailbox.probe(imap)))
    except Exception as exc:
        found.append((f"IMAP {imap.host}:{imap.effective_port}", False, f"{type(exc).__name__}: {exc}"))
    try:
        state, size = await _smtp(smtp)
        limit = f"; mail up to {int(size):,} bytes" if size and size.isdigit() else ""
        found.append((f"SMTP {smtp.host}:{smtp.effective_port}", True, f"{state}{limit}"))
    except Exception as exc:
        found.append((f"SMTP {smtp.host}:{smtp.effective_port}", False, f"{type(exc).__name__}: {exc}"))
    if settings.trusted_authserv_id is None:
        found.append(("identity", False, "trusted_authserv_id is not set: no sender is verified (see docs/email.md)"))
    else:
        found.append(("identity", True, f"dmarc=pass from {settings.trusted_authserv_id} verifies a sender"))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m connectors.email", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["check"])
    parser.add_argument("-c", "--config", help="the config file (default: $SUPPORTBOT_CONFIG, then ./config.yaml)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except SupportbotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = config.connector("email")
    if not isinstance(settings, EmailSettings) or not settings.enabled:
        print("error: connectors.email is not enabled in the config; see README 'Email'", file=sys.stderr)
        return 2
    results = asyncio.run(check(settings))
    for what, ok, detail in results:
        print(f"{'ok  ' if ok else 'FAIL'} {what}: {detail}")
    return 0 if all(ok for what, ok, _ in results if what != "identity") else 1
