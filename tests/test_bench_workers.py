"""``python -m bench workers``: a tiny run prints its table and checks every answer in the database."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from bench.workers import Row, Seen, check, percentile, table
from supportbot.store.base import NewMessage
from supportbot.store.sql import SQLStore

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.postgres


def start_bench(workers: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.Popen(
        [sys.executable, "-m", "bench", "workers", "--workers", workers, "--conversations", "3", "--messages", "2",
         "--error-rate", "0", "--timeout", "60"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_a_small_run_with_one_and_two_workers_prints_the_table(pg_url: str) -> None:
    """``pg_url``: skipped without PostgreSQL (the bench makes a schema of its own in the same database).

    The two worker counts run as two benchmarks side by side: the run with two workers may wait for the
    killed worker's lease to expire (10 s), which the run with one worker fills.
    """
    runs = {workers: start_bench(workers) for workers in ("1", "2")}
    outputs = {workers: run.communicate(timeout=240) for workers, run in runs.items()}
    head = ["workers", "messages", "answered", "once", "duplicates", "lost", "msg/s", "ack", "p50/p95", "ms", "reply",
            "p50/p95", "ms"]  # fmt: skip
    # 1: the check found a duplicate or a lost message (a finding, printed in the table); 2: the run failed.
    for workers, (stdout, stderr) in outputs.items():
        assert runs[workers].returncode in (0, 1), stdout + stderr
        assert stdout.splitlines()[0].split() == head, stdout
    one_out, two_out = outputs["1"][0], outputs["2"][0]
    one = one_out.splitlines()[2].split()
    assert one[:5] == ["1", "6", "6", "0", "0"], one_out  # one worker, nothing killed: exactly once
    assert "PASS  1 worker(s): every message answered exactly once" in one_out
    two = two_out.splitlines()[2].split()
    assert two[:2] == ["2", "6"] and int(two[2]) + int(two[4]) <= 6, two_out
    assert "2 worker(s): " in two_out and "killed worker pid" in two_out


async def test_the_check_finds_answers_twice_messages_stored_twice_lost_ones_and_outbox_rows_twice(
    pg_url: str,
) -> None:
    """The database check of the run above, on a history made by hand: each kind of fault is counted and FAILs."""
    store = await SQLStore.open(pg_url)
    try:
        customer = await store.get_or_create_customer(external_id="bench-check")
        conversation = await store.create_conversation(customer_id=customer.id, channel="web", flow="general")

        def user(text: str) -> NewMessage:
            return NewMessage(role="user", content=text)

        answer = NewMessage(role="assistant", content="an answer")
        await store.add_messages(conversation.id, [user("once"), answer])
        await store.add_messages(conversation.id, [user("twice"), answer, answer])
        await store.add_messages(conversation.id, [user("again"), answer, user("again"), answer])
        (sent,) = await store.add_messages(conversation.id, [user("sent twice")])
        await store.add_messages(conversation.id, [answer])
        for _ in range(2):
            await store.outbox_add("web", {"kind": "bot", "text": "an answer"}, conversation_id=conversation.id,
                                   message_id=sent.id)  # fmt: skip
        await store.add_messages(conversation.id, [user("lost")])
    finally:
        await store.close()
    url = make_url(pg_url)
    schema = url.query["search_path"]
    assert isinstance(schema, str)
    base = url.difference_update_query(["search_path"]).render_as_string(hide_password=False)
    texts = ["once", "twice", "again", "sent twice", "lost"]

    checked = await check(base, schema, {conversation.id: texts})

    assert (checked.answered_once, checked.lost) == (2, 1)  # "once" and "sent twice" (its message); "lost"
    assert (checked.answered_twice, checked.stored_twice, checked.outbox_duplicates) == (1, 1, 1)
    assert checked.duplicates == 3
    seen = Seen(acked={conversation.id: texts}, ack_s=[0.1] * 5, reply_s=[0.2] * 4, acked_count=5)
    args = argparse.Namespace(conversations=1, messages=5)
    shown = table([Row(workers=1, seen=seen, checked=checked, elapsed_s=1.0, fake_counts=(9, 0))], args)
    assert "answered again 1, outbox row again 1" in shown and "customer message stored again 1" in shown
    assert shown.splitlines()[-1] == "FAIL  1 worker(s): every message answered exactly once"


@pytest.mark.parametrize(("values", "q", "expected"), [([], 50, None), ([7.0], 95, 7.0), ([1.0, 2.0, 3.0], 50, 2.0)])
def test_percentile(values: list[float], q: float, expected: float | None) -> None:
    found = percentile(values, q)
    assert found != found if expected is None else found == pytest.approx(expected)
