from __future__ import annotations

import pytest

from supportbot.config import Pricing
from supportbot.messages import Usage
from supportbot.pricing import cost_usd


def test_default_prices_are_the_model_cards() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert cost_usd(usage, Pricing()) == pytest.approx(0.75 + 4.50)


def test_audio_input_is_billed_at_the_audio_rate() -> None:
    usage = Usage(input_tokens=1_000_000, audio_input_tokens=400_000)
    assert cost_usd(usage, Pricing()) == pytest.approx(0.6 * 0.75 + 0.4 * 3.00)
