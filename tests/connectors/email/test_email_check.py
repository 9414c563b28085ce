"""``python -m connectors.email check``: logs in to the real Dovecot and the SMTP sink, and says what failed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from connectors.email.check import main
from connectors.email.testing import Dovecot, SmtpSink
from tests.connectors.email.conftest import SinkFactory


def config(tmp_path: Path, dovecot: Dovecot, sink: SmtpSink, **email: Any) -> str:
    imap = {"host": dovecot.host, "port": dovecot.port, "starttls": True, "ca_file": str(dovecot.ca_file),
            "username": dovecot.username, "password": dovecot.password}  # fmt: skip
    smtp = {"host": sink.host, "port": sink.port, "starttls": True, "ca_file": str(sink.ca_file),
            "username": "help", "password": "pw"}  # fmt: skip
    section = {"enabled": True, "address": "help@acme.example", "imap": imap, "smtp": smtp,
               "trusted_authserv_id": "mx.acme.example", **email}  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps({"database": {"url": f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"},
                                "connectors": {"email": section}}))  # fmt: skip
    return str(path)


async def test_check_logs_in_to_both_servers(
    tmp_path: Path, dovecot: Dovecot, make_smtp_sink: SinkFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    sink = await make_smtp_sink(mode="starttls", username="help", password="pw")
    await dovecot.append(b"From: a@b.example\r\nSubject: x\r\n\r\nhi\r\n")
    path = config(tmp_path, dovecot, sink)
    assert await asyncio.to_thread(main, ["check", "-c", path]) == 0
    out = capsys.readouterr().out
    assert f"ok   IMAP 127.0.0.1:{dovecot.port}: INBOX has 1 mails; new mail by IDLE; MOVE available" in out
    assert f"ok   SMTP 127.0.0.1:{sink.port}: logged in" in out
    assert sink.mails == [] and "\\Seen" not in await dovecot.flags(1)  # nothing read, nothing sent


async def test_check_says_what_failed(
    tmp_path: Path, dovecot: Dovecot, make_smtp_sink: SinkFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    sink = await make_smtp_sink(mode="starttls", username="help", password="other")
    path = config(tmp_path, dovecot, sink, trusted_authserv_id=None,
                  imap={"host": dovecot.host, "port": dovecot.port, "starttls": True, "ca_file": str(dovecot.ca_file),
                        "username": dovecot.username, "password": "wrong"})  # fmt: skip
    assert await asyncio.to_thread(main, ["check", "-c", path]) == 1
    out = capsys.readouterr().out
    assert "FAIL IMAP" in out and "LOGIN" in out
    assert "FAIL SMTP" in out and "535" in out
    assert "FAIL identity: trusted_authserv_id is not set" in out
