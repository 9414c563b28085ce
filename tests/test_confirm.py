from __future__ import annotations

import pytest

from supportbot.confirm import confirmation_prompt, is_yes
from supportbot.messages import ToolCall


@pytest.mark.parametrize("reply", ["yes", "Yes!", "  ok ", "y", "Yes, please", "go ahead.", "OK 👍", "Sure"])
def test_clear_yes(reply: str) -> None:
    assert is_yes(reply)


@pytest.mark.parametrize("reply", ["no", "yes but change the subject", "not yet", "", "maybe", "yes no", "what?"])
def test_anything_else_is_not_a_yes(reply: str) -> None:
    assert not is_yes(reply)


def test_prompt_shows_the_exact_call() -> None:
    call = ToolCall(id="1", name="create_ticket", arguments='{"subject": "Broken tent", "priority": "high"}')
    text = confirmation_prompt([call])
    assert "create_ticket" in text and "Broken tent" in text and "high" in text and '"yes"' in text
