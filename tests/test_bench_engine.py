"""The engine benchmark's arithmetic: a ratio per round, against the bare client's run of that round."""

from __future__ import annotations

from bench.engine import MODES, Result, ratios, report


def _results(*rounds: tuple[float, float, float]) -> dict[str, list[Result]]:
    """CPU ms per turn of the three modes, round by round."""
    return {mode: [Result(mode, 100, cpus[i], 1.0, 0) for cpus in rounds] for i, mode in enumerate(MODES)}


def test_each_round_is_divided_by_its_own_bare_run() -> None:
    # The machine was twice as slow in the second round: the ratios stay 2 and 1.5.
    results = _results((1.0, 2.0, 1.5), (2.0, 4.0, 3.0))
    assert ratios(results, MODES[1]) == [2.0, 2.0]
    assert ratios(results, MODES[2]) == [1.5, 1.5]
    lines = report(results, [100.0, 100.0]).splitlines()
    assert "2.00 (2.00-2.00)" in lines[2] and "1.50 (1.50-1.50)" in lines[3]


def test_the_ratio_is_the_median_of_the_rounds_ratios_not_a_ratio_of_medians() -> None:
    # Slow rounds for one mode only: its median ratio is 2.0, while the ratio of its median
    # to the bare client's median would be 3.0 / 1.0.
    results = _results((1.0, 2.0, 1.0), (3.0, 6.0, 3.0), (3.0, 6.0, 3.0), (1.0, 2.0, 1.0), (1.0, 3.0, 1.0))
    assert sorted(ratios(results, MODES[1])) == [2.0, 2.0, 2.0, 2.0, 3.0]
    assert "2.00 (2.00-2.00)" in report(results, [100.0] * 5).splitlines()[2]


def test_the_middle_half_lies_within_the_rounds_measured() -> None:
    lines = report(_results((1.0, 1.8, 1.2), (1.0, 2.0, 1.3)), [100.0, 100.0]).splitlines()
    assert "1.90 (1.85-1.95)" in lines[2]  # not 1.75-2.05, which neither round measured
