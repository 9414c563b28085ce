"""``python -m bench workers``: a tiny run prints its table and checks every answer in the database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.workers import percentile

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.postgres


def test_a_small_run_with_one_and_two_workers_prints_the_table(pg_url: str) -> None:
    """``pg_url``: skipped without PostgreSQL (the bench makes a schema of its own in the same database)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "workers", "--workers", "1", "--workers", "2", "--conversations", "3",
         "--messages", "2", "--error-rate", "0", "--timeout", "60"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    # 1: the check found a duplicate or a lost message (a finding, printed in the table); 2: the run failed.
    assert done.returncode in (0, 1), done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["workers", "messages", "answered", "once", "duplicates", "lost", "msg/s", "ack",
                                "p50/p95", "ms", "reply", "p50/p95", "ms"]  # fmt: skip
    one = lines[2].split()
    assert one[:5] == ["1", "6", "6", "0", "0"], done.stdout  # one worker, nothing killed: exactly once
    two = lines[3].split()
    assert two[:2] == ["2", "6"] and int(two[2]) + int(two[4]) <= 6, done.stdout
    assert "2 worker(s): " in done.stdout and "killed worker pid" in done.stdout
    assert "PASS  1 worker(s): every message answered exactly once" in done.stdout


@pytest.mark.parametrize(("values", "q", "expected"), [([], 50, None), ([7.0], 95, 7.0), ([1.0, 2.0, 3.0], 50, 2.0)])
def test_percentile(values: list[float], q: float, expected: float | None) -> None:
    found = percentile(values, q)
    assert found != found if expected is None else found == pytest.approx(expected)
