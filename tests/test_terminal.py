from __future__ import annotations

from supportbot.terminal import safe


def test_escape_sequences_are_shown_not_interpreted() -> None:
    assert safe("hi\x1b[2J\x1b]0;pwned\x07 there") == "hi\\x1b[2J\\x1b]0;pwned\\x07 there"


def test_newlines_tabs_and_unicode_pass() -> None:
    assert safe("a\tb\nc é 😀") == "a\tb\nc é 😀"


def test_bidi_override_is_shown() -> None:
    assert safe("abc\u202edef") == "abc\\u202edef"
