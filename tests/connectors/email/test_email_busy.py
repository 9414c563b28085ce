"""A worker too busy to take a mail leaves it unread, to be read again (as when the database is away)."""

from __future__ import annotations

import pytest

from supportbot.channels import Busy
from tests.connectors.email.test_email_receive import Setup, mail, setup

__all__ = ["setup"]  # the fixture of tests/connectors/email/test_email_receive.py, used here too


async def test_a_busy_worker_raises_so_the_mail_stays_unread(setup: Setup) -> None:
    setup.intake.fail_with = Busy("this worker is busy", retry_after=5)
    with pytest.raises(Busy):
        await setup.receiver.mail(mail())
    assert setup.intake.messages == {}
    setup.intake.fail_with = None
    assert await setup.receiver.mail(mail()) == "stored"
