"""What a model response cost, from its usage and the configured prices, and how a cost is written."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI formats costs without loading the config's models
    from supportbot.config import Pricing
    from supportbot.messages import Usage

_PER_TOKEN = 1e-6

COST_DECIMALS = 8
"""Decimals a cost keeps in JSON: exact for whole tokens at prices in cents per million (0.75 / 1M = 0.00000075)."""


def cost_usd(usage: Usage, pricing: Pricing) -> float:
    """US dollars for one response. Audio input tokens are billed at the audio rate, the rest of the input at
    the text rate; thinking tokens are already part of ``output_tokens``."""
    text_input = max(usage.input_tokens - usage.audio_input_tokens, 0)
    return (
        text_input * pricing.input_per_mtok
        + usage.audio_input_tokens * pricing.audio_input_per_mtok
        + usage.output_tokens * pricing.output_per_mtok
    ) * _PER_TOKEN


def format_usd(value: float) -> str:
    """Dollars for people, with the digits that matter: ``$12.50``, ``$1,204.00``, ``$0.0031``, ``$0.000042``.

    A day of test traffic costs fractions of a cent, so below a dollar there are four decimals, and
    more for smaller amounts (two significant digits), never ``0.0030644999999999995``.
    """
    if value == 0 or abs(value) >= 1:
        return f"${value:,.2f}"
    decimals = max(4, 1 - math.floor(math.log10(abs(value))))
    return f"${value:.{decimals}f}"
