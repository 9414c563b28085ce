"""A real IMAP server and an SMTP sink on 127.0.0.1 for the email connector's tests and benchmark.

Only tests and benchmarks import this package; the connector never does.

- ``Dovecot``: Debian's Dovecot (``apt-get install dovecot-imapd``) started as a child process with its own
  config, ports and maildir in a temporary directory; plain IMAP with STARTTLS on ``port``, implicit TLS on
  ``ssl_port``; helpers to append mail, read messages and flags, change UIDVALIDITY, restart and kill it.
- ``SmtpSink``: aiosmtpd on the running event loop, in plain, STARTTLS or implicit-TLS mode, optionally
  requiring AUTH; records each accepted ``SentMail``, waits for them, and answers 4xx/5xx on demand.
- ``certs``: one test CA per process and a certificate for ``127.0.0.1``/``localhost`` that both servers
  present (``server_certs()``); clients trust ``ca_file()`` or use ``client_context()``.

Example::

    async with Dovecot() as imap, SmtpSink(mode="starttls") as smtp:
        uid = await imap.append(b"From: ana@example.com\\r\\nSubject: Order A1001\\r\\n\\r\\nWhere is it?\\r\\n")
        ...  # the connector reads imap.host/imap.port and sends through smtp.host/smtp.port
        [reply] = await smtp.wait_for(1)
        assert "\\\\Seen" in await imap.flags(uid)
"""

from __future__ import annotations

from connectors.email.testing.certs import Certs, ca_file, client_context, server_certs, server_context
from connectors.email.testing.dovecot import (
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    Dovecot,
    DovecotError,
    StoredMail,
    find_binary,
)
from connectors.email.testing.sink import Mode, SentMail, SmtpSink, Stage

__all__ = [
    "DEFAULT_PASSWORD",
    "DEFAULT_USER",
    "Certs",
    "Dovecot",
    "DovecotError",
    "Mode",
    "SentMail",
    "SmtpSink",
    "Stage",
    "StoredMail",
    "ca_file",
    "client_context",
    "find_binary",
    "server_certs",
    "server_context",
]
