from __future__ import annotations

import pytest

from supportbot.config import Pricing
from supportbot.messages import Usage
from supportbot.pricing import cost_usd, format_usd


def test_default_prices_are_the_model_cards() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert cost_usd(usage, Pricing()) == pytest.approx(0.75 + 4.50)


def test_audio_input_is_billed_at_the_audio_rate() -> None:
    usage = Usage(input_tokens=1_000_000, audio_input_tokens=400_000)
    assert cost_usd(usage, Pricing()) == pytest.approx(0.6 * 0.75 + 0.4 * 3.00)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0, "$0.00"),
        (0.0030644999999999995, "$0.0031"),
        (0.05, "$0.0500"),
        (0.0005, "$0.00050"),
        (0.0000421, "$0.000042"),
        (1, "$1.00"),
        (1234.567, "$1,234.57"),
    ],
)
def test_costs_are_written_with_the_digits_that_matter(value: float, shown: str) -> None:
    assert format_usd(value) == shown
