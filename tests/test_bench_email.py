"""``python -m bench email``: a run with three mails prints its figures and exits 0; replies are matched right.

The run needs Dovecot (``.ci/run`` installs it): without it the smoke test is skipped, or fails when ``CI`` is set.
"""

from __future__ import annotations

import os
import subprocess
import sys
from email.parser import BytesParser
from email.policy import default
from pathlib import Path

import pytest

from bench.email import tally
from connectors.email.testing import SentMail
from tests.connectors.email.conftest import require_dovecot

REPO = Path(__file__).resolve().parents[1]


def test_a_small_run_prints_the_figures_and_exits_0() -> None:
    require_dovecot()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "email", "--mails", "3", "--senders", "2", "--rate", "0", "--grace", "0.5",
         "--timeout", "30"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for figure in ("mails sent", "arrival -> reply sent p50 / p95", "p99 / max", "fake model's own time",
                   "throughput", "server CPU per mail"):  # fmt: skip
        assert figure in out, out
    assert "3 / 3" in out and "PASS  every mail answered exactly once" in out, out


def reply_to(message_id: str, at: float) -> SentMail:
    """A reply as the sink records it: parsed from its bytes."""
    raw = f"From: help@acme.example\r\nIn-Reply-To: {message_id}\r\n\r\nAn answer.\r\n".encode()
    return SentMail(mail_from="help@acme.example", rcpt_tos=("ana@example.com",), raw=raw,
                    message=BytesParser(policy=default).parsebytes(raw), received_at=at, tls=False,
                    login=None)  # fmt: skip


@pytest.mark.parametrize(
    ("replies", "latencies", "duplicates", "strangers", "unanswered"),
    [
        ([("<a@x>", 10.5), ("<b@x>", 12.0)], [0.5, 1.0], 0, 0, ()),
        ([("<a@x>", 10.5), ("<a@x>", 10.9)], [0.5], 1, 0, ("<b@x>",)),
        ([("<c@x>", 10.5), ("", 10.6)], [], 0, 2, ("<a@x>", "<b@x>")),
        ([(" <b@x> ", 11.25)], [0.25], 0, 0, ("<a@x>",)),
    ],
)
def test_replies_are_matched_to_their_mails_by_in_reply_to(
    replies: list[tuple[str, float]],
    latencies: list[float],
    duplicates: int,
    strangers: int,
    unanswered: tuple[str, ...],
) -> None:
    counted = tally({"<a@x>": 10.0, "<b@x>": 11.0}, [reply_to(mid, at) for mid, at in replies])
    assert counted.latency_s == pytest.approx(latencies)
    assert (counted.duplicates, counted.strangers, counted.unanswered) == (duplicates, strangers, unanswered)
    assert counted.answered == len(latencies)
