"""The email connector's servers: a real Dovecot IMAP server and an SMTP sink, both on 127.0.0.1.

``dovecot`` is a fresh server per test (it starts in about 40 ms), so tests share no mailbox. Without the
``dovecot`` binary the tests that need it are skipped, or fail when the ``CI`` environment variable is set
(``.ci/run`` installs ``dovecot-imapd``). ``smtp_sink`` is a plain SMTP sink; ``make_smtp_sink(mode=...,
require_starttls=..., username=..., password=...)`` makes others, closed after the test.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from connectors.email.testing import Dovecot, SmtpSink

SinkFactory = Callable[..., Awaitable[SmtpSink]]


def require_dovecot() -> None:
    """Skips the test when Dovecot is not installed (fails it on CI, which must have installed it)."""
    if Dovecot.available():
        return
    message = "the email tests need Dovecot (apt-get install --no-install-recommends dovecot-imapd)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI is set, and .ci/run installs it")
    pytest.skip(message)


@pytest.fixture
async def dovecot() -> AsyncIterator[Dovecot]:
    """A Dovecot server with the user ``help@acme.example`` / ``secret``, removed after the test."""
    require_dovecot()
    async with Dovecot() as server:
        yield server


@pytest.fixture
async def make_smtp_sink() -> AsyncIterator[SinkFactory]:
    """``await make_smtp_sink(mode="starttls", ...)``: a started ``SmtpSink``, closed after the test."""
    made: list[SmtpSink] = []

    async def make(**options: object) -> SmtpSink:
        sink = SmtpSink(**options)  # type: ignore[arg-type]
        await sink.start()
        made.append(sink)
        return sink

    yield make
    for sink in made:
        await sink.close()


@pytest.fixture
async def smtp_sink(make_smtp_sink: SinkFactory) -> SmtpSink:
    """A plain SMTP sink without AUTH."""
    return await make_smtp_sink()
