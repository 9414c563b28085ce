"""The email channel: a support mailbox read over IMAP and answered over SMTP, threaded and loop-safe.

``CONNECTOR`` is the ``email`` entry point of ``supportbot.connectors``; ``supportbot serve`` calls
``setup`` when ``connectors.email.enabled`` is true (README "Email" and docs/email.md set it up).
The channel's ``start`` begins reading the mailbox (``imap``); each mail is parsed (``parse``,
``html``), checked for loops (``loops``), its sender verified by DMARC (``authres``), its thread found
(``threads``, ``state``) and stored in the core's inbox (``receive``) before it is flagged read.
Replies leave through ``EmailChannel.deliver`` from the core's outbox (``channel``).
"""

from __future__ import annotations

from typing import cast

from aiohttp import web

from connectors.email.channel import EmailChannel
from connectors.email.receive import CHANNEL
from connectors.email.settings import EmailSettings
from connectors.email.state import Keeper
from supportbot.channels import Connector
from supportbot.store.mailboxes import ChannelState, Mailboxes

__all__ = ["CONNECTOR", "EmailChannel", "EmailSettings", "setup"]


def setup(app: web.Application, settings: EmailSettings) -> EmailChannel:
    """Return the channel the core delivers through; it reads the mailbox once the server starts it."""
    from supportbot.server import RUNTIME  # the server imports connectors

    runtime = app[RUNTIME]
    mailboxes = cast(Mailboxes, runtime.store)  # SQLStore has them; the server delivers through them

    async def get(key: str) -> str | None:
        return await mailboxes.channel_state(CHANNEL, key)

    async def put(key: str, value: str) -> None:
        await mailboxes.set_channel_state(ChannelState(channel=CHANNEL, key=key, value=value))

    # With several workers, the per-sender cap's count is changed by one worker at a time.
    hold = getattr(runtime.store, "hold_lease", None) if getattr(runtime.store, "dialect", "") == "postgresql" else None
    company = runtime.config.company.get("name") if isinstance(runtime.config.company, dict) else None
    keeper = Keeper(get, put, hold=hold)
    return EmailChannel(settings, keeper, company=str(company or ""), limits=runtime.config.limits)


CONNECTOR = Connector(name="email", settings=EmailSettings, setup=setup)
