"""What a model response cost, from its usage and the configured prices."""

from __future__ import annotations

from supportbot.config import Pricing
from supportbot.messages import Usage

_PER_TOKEN = 1e-6


def cost_usd(usage: Usage, pricing: Pricing) -> float:
    """US dollars for one response. Audio input tokens are billed at the audio rate, the rest of the input at
    the text rate; thinking tokens are already part of ``output_tokens``."""
    text_input = max(usage.input_tokens - usage.audio_input_tokens, 0)
    return (
        text_input * pricing.input_per_mtok
        + usage.audio_input_tokens * pricing.audio_input_per_mtok
        + usage.output_tokens * pricing.output_per_mtok
    ) * _PER_TOKEN
